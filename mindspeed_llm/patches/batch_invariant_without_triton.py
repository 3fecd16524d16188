"""Stands in for megatron-core's ``transformer.custom_layers.batch_invariant_kernels`` without Triton.

megatron-core 0.16.1's module is Triton kernels; Megatron-LM's ``initialize.py`` imports
``enable_batch_invariant_mode`` from it at import, so without Triton Megatron-LM's scripts cannot even
start. The import hook of group ``import-hooks`` (:mod:`mindspeed_llm.patches.megatron_lm`) runs this
file as that module when Triton is not installed: the same four public functions, and
``--batch-invariant-mode`` refused with one line.
"""

from __future__ import annotations

import contextlib

__all__ = ["disable_batch_invariant_mode", "enable_batch_invariant_mode", "is_batch_invariant_mode_enabled",
           "set_batch_invariant_mode"]


def enable_batch_invariant_mode() -> None:
    """Refused: batch-invariant mode needs Triton's kernels on a CUDA GPU."""
    raise RuntimeError("--batch-invariant-mode needs Triton's kernels on a CUDA GPU, and triton is not "
                       "installed: pip install triton, or drop --batch-invariant-mode")


def disable_batch_invariant_mode() -> None:
    """Nothing to disable: the mode can never be on here."""


def is_batch_invariant_mode_enabled() -> bool:
    """Always False: the mode can never be on here."""
    return False


def set_batch_invariant_mode(enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context for the mode: refused when ``enabled``, else one that does nothing."""
    if enabled:
        enable_batch_invariant_mode()
    return contextlib.nullcontext()
