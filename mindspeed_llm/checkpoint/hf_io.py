"""Lazy reading and sharded writing of HuggingFace safetensors folders."""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mindspeed_llm.checkpoint.errors import CheckpointError

INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
# Files copied from the original HF folder next to converted weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


class HfReader:
    """Opens an HF folder's safetensors shards and reads one tensor at a time (nothing is preloaded)."""

    def __init__(self, folder: str):
        self.folder = folder
        if not os.path.isdir(folder):
            raise CheckpointError(f"--load-dir {folder} does not exist: point it at the HF model folder")
        entries = os.listdir(folder)
        if not entries:
            raise CheckpointError(f"--load-dir {folder} is empty: download the HF model (config.json + *.safetensors) into it")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise CheckpointError(f"{os.path.join(folder, 'config.json')} not found: --load-dir must be an HF model folder")
        index_path = os.path.join(folder, INDEX_FILENAME)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            missing_files = sorted({v for v in weight_map.values() if not os.path.isfile(os.path.join(folder, v))})
            if missing_files:
                raise CheckpointError(
                    f"{index_path} names shards that are missing: {', '.join(missing_files)}; re-download them"
                )
            self.weight_map = dict(weight_map)
        else:
            files = sorted(e for e in entries if e.endswith(".safetensors"))
            if not files:
                if any(e.endswith(".bin") or e.endswith(".pt") for e in entries):
                    raise CheckpointError(
                        f"--load-dir {folder} holds only PyTorch .bin weights, which are not supported: convert "
                        "them to safetensors first (transformers: model.save_pretrained(dir, safe_serialization=True))"
                    )
                raise CheckpointError(f"--load-dir {folder} has no *.safetensors weights (nor {INDEX_FILENAME})")
            self.weight_map = {}
            for name in files:
                with safe_open(os.path.join(folder, name), framework="pt") as f:
                    for key in f.keys():
                        self.weight_map[key] = name
        self._handles: dict[str, object] = {}

    def names(self) -> set[str]:
        """All tensor names present."""
        return set(self.weight_map)

    def dtype(self) -> torch.dtype:
        """dtype of the embedding (the checkpoint's dtype), from the header."""
        name = "model.embed_tokens.weight"
        code = self._handle(name).get_slice(name).get_dtype()
        return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                "F64": torch.float64}[code]

    def _handle(self, name: str):
        file = self.weight_map[name]
        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(os.path.join(self.folder, file), framework="pt")
            self._handles[file] = handle
        return handle

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor from its shard."""
        return self._handle(name).get_tensor(name)

    def shape(self, name: str) -> list[int]:
        """Shape of one tensor, from the file header only."""
        return self._handle(name).get_slice(name).get_shape()

    def close(self) -> None:
        """Drop the open shard handles."""
        self._handles.clear()


class HfShardWriter:
    """Writes tensors into safetensors shards of at most ``max_shard_bytes`` plus the index."""

    def __init__(self, folder: str, max_shard_bytes: int = 5 * 1024**3):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue a tensor; flushes a shard when it is full."""
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += nbytes
        self.total_size += nbytes

    def flush(self) -> None:
        """Write the queued tensors as one shard (temporary name until :meth:`finish`)."""
        if not self._pending:
            return
        index = len(self._shards)
        save_file(self._pending, os.path.join(self.folder, f"shard-{index:05d}.tmp"), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending = {}
        self._pending_bytes = 0

    def finish(self) -> None:
        """Name the shards ``model-0000K-of-0000N.safetensors`` and write the index."""
        self.flush()
        n = len(self._shards)
        weight_map = {}
        for k, names in enumerate(self._shards):
            final = SINGLE_FILENAME if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.folder, f"shard-{k:05d}.tmp"), os.path.join(self.folder, final))
            for name in names:
                weight_map[name] = final
        if n > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(self.folder, INDEX_FILENAME), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copy tokenizer and generation-config files that exist in ``src``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES + ("generation_config.json",):
        path = os.path.join(src, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(dst, name))
            copied.append(name)
    return copied
