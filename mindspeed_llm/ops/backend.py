"""Which implementation of an op runs: chosen from the tensor's device unless asked for explicitly."""

from __future__ import annotations

import torch

BACKENDS = ("torch", "cuda", "npu")


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """Return 'npu', 'cuda' or 'torch' (the reference, for CPU and anything else) for ``tensor``."""
    if backend is None:
        kind = tensor.device.type
        return kind if kind in ("npu", "cuda") else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)} or None (by device)")
    return backend
