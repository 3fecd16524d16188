"""Rotary position embedding (megatron's non-interleaved "rotate-half" RoPE) per device.

Inputs follow megatron: ``t`` is ``[s, b, n, d]`` (any leading dims with the sequence first) and
``freqs`` is ``[s, 1, 1, d_rot]`` (angles, ``d_rot <= d``; the remaining channels pass through).
The result equals ``megatron.core.models.common.embeddings.rope_utils._apply_rotary_pos_emb_bshd``
with ``rotary_interleaved=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.npu import require_torch_npu


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _cos_sin(freqs: Tensor, mscale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return (torch.cos(freqs) * mscale).to(dtype), (torch.sin(freqs) * mscale).to(dtype)


def rotary_reference(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """``t * cos + rotate_half(t) * sin`` on the first ``freqs.shape[-1]`` channels."""
    rot_dim = freqs.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    cos, sin = _cos_sin(freqs, mscale, t.dtype)
    out = t_rot * cos + _rotate_half(t_rot) * sin
    return torch.cat((out, t_pass), dim=-1) if t_pass.shape[-1] else out


def rotary_cuda(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """flash-attn's fused rotary kernel when installed (needs ``freqs`` = [s, 1, 1, d_rot] of halves
    duplicated, as megatron builds them), else the reference."""
    try:
        from flash_attn.layers.rotary import apply_rotary_emb
    except Exception:  # noqa: BLE001 - absent or broken CUDA extension
        return rotary_reference(t, freqs, mscale)
    if t.dim() != 4 or freqs.dim() != 4 or freqs.shape[1] != 1:
        return rotary_reference(t, freqs, mscale)
    half = freqs[:, 0, 0, : freqs.shape[-1] // 2]
    cos, sin = _cos_sin(half, mscale, t.dtype)
    out = apply_rotary_emb(t.transpose(0, 1), cos, sin, interleaved=False)  # flash-attn wants [b, s, n, d]
    return out.transpose(0, 1)


def rotary_npu(t: Tensor, freqs: Tensor, mscale: float = 1.0, torch_npu: Any = None) -> Tensor:
    """``torch_npu.npu_rotary_mul(x, cos, sin, rotary_mode='half')`` on the rotated channels."""
    npu = require_torch_npu(torch_npu, "apply_rotary_pos_emb")
    rot_dim = freqs.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    cos, sin = _cos_sin(freqs, mscale, t.dtype)
    out = npu.npu_rotary_mul(t_rot.contiguous(), cos, sin, rotary_mode="half")
    return torch.cat((out, t_pass), dim=-1) if t_pass.shape[-1] else out


def apply_rotary_pos_emb(
    t: Tensor, freqs: Tensor, mscale: float = 1.0, backend: str | None = None, torch_npu: Any = None
) -> Tensor:
    """Rotate-half RoPE on ``t`` with the implementation for its device (``backend`` forces one)."""
    kind = resolve_backend(t, backend)
    if kind == "npu":
        return rotary_npu(t, freqs, mscale, torch_npu=torch_npu)
    if kind == "cuda":
        return rotary_cuda(t, freqs, mscale)
    return rotary_reference(t, freqs, mscale)
