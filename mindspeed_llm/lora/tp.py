"""The one tensor-parallel rule for LoRA factors: the layers (``lora/layers.py``) build each rank's A and B
with it, and conversion shards and merges adapter checkpoints with it.

- column-parallel layer (``linear_qkv``, ``linear_fc1``): A (r x in) is whole on every TP rank; B (out x r)
  is split like the layer's output rows, in the base weight's per-rank order (``linear_qkv``: contiguous
  blocks of whole query groups, its rows being interleaved per group; ``linear_fc1``: ``[gate_i; up_i]``).
- row-parallel layer (``linear_proj``, ``linear_fc2``): A is split like the layer's input columns; B is
  whole.
"""

from __future__ import annotations

from enum import Enum

import torch


class FactorSplit(Enum):
    """How one LoRA factor is laid out over the TP ranks."""

    WHOLE = "whole"  # every rank holds all of it
    ROWS = "rows"  # dim 0 in contiguous blocks
    GATE_UP_ROWS = "gate_up_rows"  # dim 0 as [gate; up] halves, rank i holding [gate_i; up_i]
    COLUMNS = "columns"  # dim 1 in contiguous blocks


COLUMN_PARALLEL = ("linear_qkv", "linear_fc1")  # the others (linear_proj, linear_fc2) are row-parallel
# How megatron-core splits each base weight: column-parallel by output rows, row-parallel by input columns.
_BASE_SPLIT = {"linear_qkv": FactorSplit.ROWS, "linear_fc1": FactorSplit.GATE_UP_ROWS,
               "linear_proj": FactorSplit.COLUMNS, "linear_fc2": FactorSplit.COLUMNS}


def is_column_parallel(module: str) -> bool:
    """True for a column-parallel layer (its output is split over TP), False for a row-parallel one."""
    return module in COLUMN_PARALLEL


def factor_splits(module: str) -> tuple[FactorSplit, FactorSplit]:
    """``(A's, B's)`` split: the factor on the base layer's split side follows it, the other is whole."""
    base = _BASE_SPLIT[module]
    return (FactorSplit.WHOLE, base) if is_column_parallel(module) else (base, FactorSplit.WHOLE)


def partition_dim(split: FactorSplit) -> int | None:
    """The dimension megatron's TP attributes name for a split factor; None for a whole one."""
    if split is FactorSplit.WHOLE:
        return None
    return 1 if split is FactorSplit.COLUMNS else 0


def _shard(split: FactorSplit, full: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """``tp`` rank-local tensors, each with its own storage (safe to ``torch.save`` one by one)."""
    if tp == 1:
        return [full.contiguous()]
    if split is FactorSplit.WHOLE:
        return [full.clone() for _ in range(tp)]
    if split is FactorSplit.ROWS:
        parts = torch.chunk(full, tp, dim=0)
    elif split is FactorSplit.COLUMNS:
        parts = torch.chunk(full, tp, dim=1)
    else:
        gate, up = torch.chunk(full, 2, dim=0)
        parts = [torch.cat([g, u], dim=0) for g, u in zip(torch.chunk(gate, tp), torch.chunk(up, tp))]
    return [p.clone() for p in parts]


def _unshard(split: FactorSplit, parts: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`_shard`."""
    if len(parts) == 1 or split is FactorSplit.WHOLE:
        return parts[0]
    if split is FactorSplit.ROWS:
        return torch.cat(parts, dim=0)
    if split is FactorSplit.COLUMNS:
        return torch.cat(parts, dim=1)
    halves = [torch.chunk(p, 2, dim=0) for p in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


Pair = tuple[torch.Tensor, torch.Tensor]  # (A, B)


def shard_adapter(module: str, a: torch.Tensor, b: torch.Tensor, tp: int) -> list[Pair]:
    """Whole A, B of one adapted layer -> the ``tp`` rank-local ``(A_i, B_i)`` pairs."""
    a_split, b_split = factor_splits(module)
    return list(zip(_shard(a_split, a, tp), _shard(b_split, b, tp)))


def unshard_adapter(module: str, pairs: list[Pair]) -> Pair:
    """Inverse of :func:`shard_adapter`: the rank-local pairs, in TP rank order -> whole A, B."""
    a_split, b_split = factor_splits(module)
    return _unshard(a_split, [p[0] for p in pairs]), _unshard(b_split, [p[1] for p in pairs])
