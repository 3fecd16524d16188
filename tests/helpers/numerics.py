"""Tolerances of the kernel tests: one relative-error measure and the per-dtype bounds the ops are held to."""

from __future__ import annotations

import torch

# Relative error (:func:`rel_err`) an op may show against its float64 reference, per input dtype: float32
# rounding of a few passes, and bfloat16's 8-bit mantissa.
DTYPE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` in Frobenius norm, computed in float64 (0 / 0 counts as 0)."""
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()
