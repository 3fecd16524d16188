"""The one tensor-parallel rule for LoRA factors: the layers (``lora/layers.py``) build each rank's A and B
with it, and conversion shards and merges adapter checkpoints with it.

The tensor mechanics are megatron's parallel-linear layout (``models/tp_split.py``, shared with the
converter's tensor table); this module says which layout each factor takes.

- column-parallel layer (``linear_qkv``, ``linear_fc1``): A (r x in) is whole on every TP rank; B (out x r)
  is split like the layer's output rows, in the base weight's per-rank order (``linear_qkv``: contiguous
  blocks of whole query groups, its rows being interleaved per group; ``linear_fc1``: ``[gate_i; up_i]``).
- row-parallel layer (``linear_proj``, ``linear_fc2``): A is split like the layer's input columns; B is
  whole.
"""

from __future__ import annotations

import torch

from mindspeed_llm.models.tp_split import Split, shard, unshard

COLUMN_PARALLEL = ("linear_qkv", "linear_fc1")  # the others (linear_proj, linear_fc2) are row-parallel
# How megatron-core splits each base weight: column-parallel by output rows, row-parallel by input columns.
_BASE_SPLIT = {"linear_qkv": Split.COLUMN, "linear_fc1": Split.GATE_UP, "linear_proj": Split.ROW,
               "linear_fc2": Split.ROW}


def is_column_parallel(module: str) -> bool:
    """True for a column-parallel layer (its output is split over TP), False for a row-parallel one."""
    return module in COLUMN_PARALLEL


def factor_splits(module: str) -> tuple[Split, Split]:
    """``(A's, B's)`` split: the factor on the base layer's split side follows it, the other is whole."""
    base = _BASE_SPLIT[module]
    return (Split.REPLICATED, base) if is_column_parallel(module) else (base, Split.REPLICATED)


def partition_dim(split: Split) -> int | None:
    """The dimension megatron's TP attributes name for a split factor; None for a whole one."""
    if split is Split.REPLICATED:
        return None
    return 1 if split is Split.ROW else 0


Pair = tuple[torch.Tensor, torch.Tensor]  # (A, B)


def shard_adapter(module: str, a: torch.Tensor, b: torch.Tensor, tp: int) -> list[Pair]:
    """Whole A, B of one adapted layer -> the ``tp`` rank-local ``(A_i, B_i)`` pairs."""
    a_split, b_split = factor_splits(module)
    return list(zip(shard(a_split, a, tp), shard(b_split, b, tp)))


def unshard_adapter(module: str, pairs: list[Pair]) -> Pair:
    """Inverse of :func:`shard_adapter`: the rank-local pairs, in TP rank order -> whole A, B."""
    a_split, b_split = factor_splits(module)
    return unshard(a_split, [p[0] for p in pairs]), unshard(b_split, [p[1] for p in pairs])
