"""Lazy access to ``torch_npu`` for the NPU paths of the ops.

An installed torch_npu without Ascend's CANN raises ImportError, RuntimeError or OSError on import,
so any exception means "no usable torch_npu". Nothing here imports torch_npu at module import.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any


@functools.lru_cache(maxsize=1)
def get_torch_npu() -> ModuleType | None:
    """Return the ``torch_npu`` module if it imports, else None (cached)."""
    try:
        import torch_npu
    except Exception:  # noqa: BLE001 - an unusable install raises anything, not only ImportError
        return None
    return torch_npu


def require_torch_npu(torch_npu: Any = None, op: str = "this op") -> Any:
    """Return ``torch_npu`` (or the module given, e.g. a test stand-in); raise a clear error if absent."""
    if torch_npu is not None:
        return torch_npu
    module = get_torch_npu()
    if module is None:
        raise RuntimeError(
            f"{op} was asked for its NPU path but torch_npu cannot be imported: install torch_npu "
            "and Ascend CANN, or run on CPU/CUDA (the op then selects its torch or CUDA path)"
        )
    return module
