"""Full mcore tensors from a torch_dist checkpoint (megatron-core ``dist_checkpointing``, Megatron-LM's default).

Such a checkpoint stores each tensor once, with its global shape: the layers of the decoder stacked
on a leading axis (``decoder.layers.mlp.linear_fc1.weight`` is ``[num_layers, ...]``), TP shards
already merged into the TP1 form (SwiGLU's fc1 as ``[gate; up]``, QKV interleaved per query group),
whatever TP/PP/VPP wrote it. The reader loads the model tensors (not the optimizer's) with
megatron-core's own loader in this one process, so memory holds the model once.
"""

from __future__ import annotations

import argparse
import os

import torch

from mindspeed_llm.checkpoint import layout
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.checkpoint.mapping import (
    EMBEDDING,
    FINAL_NORM,
    OUTPUT_LAYER,
    TensorMapping,
    layer_mappings,
)

# megatron-core names the norms inside its sharded state dict as Transformer Engine's fused
# layers do (local and TE checkpoints share keys); the mapping table uses the local module names.
_DIST_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_NOT_MODEL = ("optimizer.", "rng_state", "rerun_state_machine")


def is_dist_checkpoint_root(root: str, iteration: int | str | None = None) -> bool:
    """True when ``root``'s (tracker or given) iteration folder holds a megatron-core distributed checkpoint."""
    if not os.path.isfile(os.path.join(root, layout.TRACKER_FILENAME)) and iteration is None:
        return False
    it = layout.read_tracker(root) if iteration is None else iteration
    folder = os.path.join(root, layout.iteration_dir_name(it))
    return os.path.isfile(os.path.join(folder, "metadata.json")) and os.path.isfile(os.path.join(folder, "common.pt"))


class _OneProcessGroup:
    """A one-rank gloo group for megatron's loader (it asks for ranks), unless one exists already."""

    def __init__(self):
        self.created = False
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
            self.created = True

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.created = False


def load_dist_model_tensors(folder: str) -> dict:
    """``{key: full tensor}`` of the model part of a distributed checkpoint folder, plus its common state."""
    from megatron.core import dist_checkpointing

    group = _OneProcessGroup()
    try:
        metadata = dist_checkpointing.load_tensors_metadata(folder)
        wanted = {k: v for k, v in metadata.items() if not k.startswith(_NOT_MODEL)}
        with layout.allowed_globals():  # common.pt holds the args (argparse.Namespace)
            return dist_checkpointing.load(wanted, folder, validate_access_integrity=False)
    finally:
        group.close()


class DistSource:
    """The converter's source interface (see :class:`~mindspeed_llm.checkpoint.sources.MgSource`) over torch_dist."""

    def __init__(self, root: str, *, iteration: int | str | None = None, hf_dir: str | None = None):
        from mindspeed_llm.checkpoint.sources import model_config_from_args

        self.root = root
        self.iteration = layout.read_tracker(root) if iteration is None else iteration
        folder = os.path.join(root, layout.iteration_dir_name(self.iteration))
        if not os.path.isdir(folder):
            raise CheckpointError(f"{folder} not found, but {layout.TRACKER_FILENAME} names it: the checkpoint is "
                                  "incomplete")
        self.tensors = load_dist_model_tensors(folder)
        self.args = self.tensors.get("args") or argparse.Namespace()
        self.tp = getattr(self.args, "tensor_model_parallel_size", 1)
        self.pp = getattr(self.args, "pipeline_model_parallel_size", 1)
        recorded = getattr(self.args, "hf_dir", None)
        self.hf_dir = hf_dir or (recorded if recorded and os.path.isdir(recorded) else None)
        self.cfg = model_config_from_args(self.args, self.hf_dir)
        embedding = self._get(EMBEDDING.mcore)
        self.dtype = embedding.dtype
        self.cfg.params_dtype = self.dtype
        self.padded_vocab_size = embedding.shape[0]
        stacked = self.tensors.get("decoder.layers.self_attention.linear_proj.weight")
        layers = stacked.shape[0] if stacked is not None else len(
            {k.split(".")[2] for k in self.tensors if k.startswith("decoder.layers.") and k.split(".")[2].isdigit()})
        if layers != self.cfg.num_layers:
            raise CheckpointError(f"{root}: the checkpoint holds {layers} layers but the model config has "
                                  f"{self.cfg.num_layers}: --hf-dir (or the recorded HF folder) belongs to another model")

    def _get(self, key: str) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.root}: {key} missing from the distributed checkpoint (iteration "
                                  f"{self.iteration}): it was written for another model") from None

    def embedding(self) -> torch.Tensor:
        """Word embeddings, padding rows dropped."""
        return self._get(EMBEDDING.mcore)[: self.cfg.vocab_size]

    def final_norm(self) -> torch.Tensor:
        """The final RMSNorm weight."""
        return self._get(FINAL_NORM.mcore)

    def output_layer(self) -> torch.Tensor:
        """Output layer, padding rows dropped (untied models)."""
        return self._get(OUTPUT_LAYER.mcore)[: self.cfg.vocab_size]

    def layer(self, layer: int, m: TensorMapping) -> torch.Tensor:
        """Full mcore tensor of one row for a global layer number."""
        name = _DIST_NAMES.get(m.mcore, m.mcore)
        stacked = self.tensors.get(f"decoder.layers.{name}")
        if stacked is not None:
            return stacked[layer]
        return self._get(f"decoder.layers.{layer}.{name}")

    def layer_mappings(self) -> list[TensorMapping]:
        """The per-layer rows of this checkpoint's model."""
        return layer_mappings(self.cfg)

    def close(self) -> None:
        """Drop the loaded tensors."""
        self.tensors = {}
