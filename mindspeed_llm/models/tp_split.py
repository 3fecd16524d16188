"""How a tensor is laid out over tensor-parallel ranks, and the split and merge that follow from it.

One home for the rule megatron-core's parallel linear layers use: the converter's tensor table
(``convert/mapping.py``) and LoRA's factors (``lora/tp.py``) both split and merge with these functions.
"""

from __future__ import annotations

from enum import Enum

import torch


class Split(Enum):
    REPLICATED = "replicated"  # every TP rank holds the whole tensor
    COLUMN = "column"  # dim 0 (output features); QKV's per-group layout makes this split by groups
    ROW = "row"  # dim 1 (input features)
    GATE_UP = "gate_up"  # rank i holds [gate_i; up_i]
    VOCAB = "vocab"  # dim 0 after padding the vocabulary


def shard(split: Split, full: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Split a full tensor into ``tp`` rank-local tensors (each its own storage, safe to ``torch.save``)."""
    if tp == 1 or split is Split.REPLICATED:
        return [full.contiguous() if tp == 1 else full.clone() for _ in range(tp)]
    if split in (Split.COLUMN, Split.VOCAB):
        parts = torch.chunk(full, tp, dim=0)
    elif split is Split.ROW:
        parts = torch.chunk(full, tp, dim=1)
    else:
        gate, up = torch.chunk(full, 2, dim=0)
        parts = [torch.cat([g, u], dim=0) for g, u in zip(torch.chunk(gate, tp), torch.chunk(up, tp))]
    return [p.clone() for p in parts]


def unshard(split: Split, parts: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`shard`."""
    if len(parts) == 1 or split is Split.REPLICATED:
        return parts[0]
    if split in (Split.COLUMN, Split.VOCAB):
        return torch.cat(parts, dim=0)
    if split is Split.ROW:
        return torch.cat(parts, dim=1)
    halves = [torch.chunk(p, 2, dim=0) for p in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
