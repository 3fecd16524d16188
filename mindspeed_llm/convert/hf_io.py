"""Lazy reading and sharded writing of HuggingFace safetensors folders."""

from __future__ import annotations

import json
import os
import shutil
import struct

import torch
from safetensors.torch import save_file

from mindspeed_llm.convert.errors import (
    CheckpointError,
    DamagedCheckpointError,
    check_load_dir,
    os_error_of,
)

INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
# Files copied from the original HF folder next to converted weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


# safetensors' own limit on the JSON header.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def _damaged(path: str, what: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"{path}: {what}: the file is damaged; download it again")


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """(tensor entries of the JSON header, byte offset where the data starts) of one safetensors file.

    Every entry is checked (dtype, shape, ``data_offsets`` inside the file and matching the shape), so a
    damaged header is one line naming the file, before anything is written.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise _damaged(path, f"{len(head)} bytes, shorter than a safetensors header")
            n = struct.unpack("<Q", head)[0]
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise _damaged(path, f"the header claims {n} bytes but the file has {size}")
            raw = f.read(n)
    except OSError as exc:
        raise DamagedCheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"the header is not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(header, dict):
        raise _damaged(path, f"the header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for key, e in header.items():
        _check_entry(path, key, e, size - data_start)
    return header, data_start


def _check_entry(path: str, key: str, e: object, data_bytes: int) -> None:
    if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
        raise _damaged(path, f"header entry {key!r} lacks dtype, shape or data_offsets")
    shape, offsets = e["shape"], e["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _damaged(path, f"tensor {key} has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _damaged(path, f"tensor {key} has data_offsets {offsets!r}")
    if e["dtype"] not in _ST_DTYPES:
        raise CheckpointError(f"{path}: tensor {key} has dtype {e['dtype']}, which is not supported")
    if offsets[1] > data_bytes:
        raise DamagedCheckpointError(
            f"{path} is truncated: tensor {key} ends at byte {offsets[1]} of the data but the file holds "
            f"{data_bytes}: download it again"
        )
    numel = 1
    for d in shape:
        numel *= d
    if numel * _ST_DTYPES[e["dtype"]].itemsize != offsets[1] - offsets[0]:
        raise _damaged(path, f"tensor {key}: shape {shape} {e['dtype']} does not fill data_offsets {offsets}")


def read_index(path: str, folder: str) -> list[str]:
    """The shard files named by ``model.safetensors.index.json`` (checked to exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    except OSError as exc:
        raise DamagedCheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(v, str) for v in weight_map.values())
    ):
        raise _damaged(path, "no 'weight_map' object of tensor name -> shard file")
    missing_files = sorted({v for v in weight_map.values() if not os.path.isfile(os.path.join(folder, v))})
    if missing_files:
        raise CheckpointError(
            f"{path} names shards that are missing: {', '.join(missing_files)}; re-download them"
        )
    return sorted(set(weight_map.values()))


class HfReader:
    """An HF folder's safetensors shards, read one tensor at a time with plain reads.

    Plain ``readinto`` (not mmap) keeps exactly one copy of each tensor in memory and no file pages
    mapped into the process, so peak memory follows what the converter holds, not what it has read.
    """

    def __init__(self, folder: str):
        self.folder = folder
        check_load_dir(folder, "hf")
        entries = os.listdir(folder)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise CheckpointError(
                f"{os.path.join(folder, 'config.json')} not found: --load-dir must be an HF model folder"
            )
        index_path = os.path.join(folder, INDEX_FILENAME)
        if os.path.isfile(index_path):
            files = read_index(index_path, folder)
        else:
            files = sorted(e for e in entries if e.endswith(".safetensors"))
            if not files:
                if any(e.endswith(".bin") or e.endswith(".pt") for e in entries):
                    raise CheckpointError(
                        f"--load-dir {folder} holds only PyTorch .bin weights, which are not supported: "
                        "convert them to safetensors first (transformers: model.save_pretrained(dir, "
                        "safe_serialization=True))"
                    )
                raise CheckpointError(
                    f"--load-dir {folder} has no *.safetensors weights (nor {INDEX_FILENAME})"
                )
        # name -> (file, dtype, shape, absolute begin, absolute end)
        self._entries: dict[str, tuple[str, torch.dtype, list[int], int, int]] = {}
        for name in files:
            path = os.path.join(folder, name)
            header, start = read_safetensors_header(path)
            for key, e in header.items():
                b, end = e["data_offsets"]
                self._entries[key] = (path, _ST_DTYPES[e["dtype"]], list(e["shape"]), start + b, start + end)
        self._files: dict[str, object] = {}

    def names(self) -> set[str]:
        """All tensor names present."""
        return set(self._entries)

    def dtype(self) -> torch.dtype:
        """dtype of the embedding (the checkpoint's dtype)."""
        return self._entries["model.embed_tokens.weight"][1]

    def entry_dtype(self, name: str) -> torch.dtype:
        """dtype of one tensor, from the header."""
        return self._entries[name][1]

    def shape(self, name: str) -> list[int]:
        """Shape of one tensor, from the header."""
        return self._entries[name][2]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh memory."""
        _, dtype, shape, _, _ = self._entries[name]
        tensor = torch.empty(shape, dtype=dtype)
        self.read_rows_into(name, tensor, 0, shape[0] if shape else 1)
        return tensor

    def read_rows_into(self, name: str, out: torch.Tensor, start: int, stop: int) -> None:
        """Read rows ``[start, stop)`` (dim 0) of a tensor straight into ``out`` (contiguous, same dtype)."""
        path, dtype, shape, begin, end = self._entries[name]
        if out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"read_rows_into({name}): out must be a contiguous {dtype} tensor")
        if out.numel() == 0:
            return
        row_bytes = (end - begin) // (shape[0] if shape else 1)
        try:
            f = self._files.get(path)
            if f is None:
                f = open(path, "rb")  # noqa: SIM115 - kept open across calls, closed by close()
                self._files[path] = f
            f.seek(begin + start * row_bytes)
            want = (stop - start) * row_bytes
            got = f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        except OSError as exc:
            raise DamagedCheckpointError(f"{path} cannot be read ({exc.strerror}): tensor {name}") from None
        if got != want:
            raise CheckpointError(f"{path}: tensor {name} is truncated: re-download the file")

    def close(self) -> None:
        """Close the shard files."""
        for f in self._files.values():
            f.close()
        self._files.clear()


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
        try:
            save_file(
                self._pending, os.path.join(self.folder, f"shard-{index:05d}.tmp"), metadata={"format": "pt"}
            )
        except Exception as exc:  # safetensors raises SafetensorError("... I/O error: ... (os error 28)")
            os_err = os_error_of(exc)
            if os_err is not None:
                raise os_err from None
            raise
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
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(weight_map.items())),
            }
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
