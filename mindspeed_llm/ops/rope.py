"""Rotary position embedding (megatron's non-interleaved "rotate-half" RoPE) per device.

Inputs follow megatron: ``t`` is ``[s, b, n, d]`` (any leading dims with the sequence first) and
``freqs`` is ``[s, 1, 1, d_rot]`` (angles, ``d_rot <= d``; the remaining channels pass through).
The result equals ``megatron.core.models.common.embeddings.rope_utils._apply_rotary_pos_emb_bshd``
with ``rotary_interleaved=False``.

On the CPU (and on CUDA without flash-attn) :func:`rotary_torch` computes it as one autograd
function: both halves written straight into the output (``t1*cos - t2*sin``, ``t2*cos + t1*sin``)
with no rotated copy or ``cat``, and a backward that applies the inverse rotation to the gradient,
so nothing but the (small) cos/sin tables is kept for backward.
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
    if mscale == 1.0:  # the usual case: no scaling pass (x * 1.0 is x)
        return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)
    return (torch.cos(freqs) * mscale).to(dtype), (torch.sin(freqs) * mscale).to(dtype)


def rotary_reference(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """``t * cos + rotate_half(t) * sin`` on the first ``freqs.shape[-1]`` channels."""
    rot_dim = freqs.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    cos, sin = _cos_sin(freqs, mscale, t.dtype)
    out = t_rot * cos + _rotate_half(t_rot) * sin
    return torch.cat((out, t_pass), dim=-1) if t_pass.shape[-1] else out


class _RotateHalfFunction(torch.autograd.Function):
    """``t * cos + rotate_half(t) * sin`` on the first ``cos.shape[-1]`` channels; cos/sin in t's dtype."""

    @staticmethod
    def forward(ctx, t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(t, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, inverse=True), None, None


def _rotate(t: Tensor, cos: Tensor, sin: Tensor, inverse: bool) -> Tensor:
    """The rotation (``inverse``: its transpose, which is the backward of the forward rotation)."""
    rot_dim = cos.shape[-1]
    half = rot_dim // 2
    out = torch.empty_like(t)
    t1, t2 = t[..., :half], t[..., half:rot_dim]
    out1, out2 = out[..., :half], out[..., half:rot_dim]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    if inverse:  # d t1 = g1*c1 + g2*s2, d t2 = g2*c2 - g1*s1
        torch.mul(t1, c1, out=out1).addcmul_(t2, s2)
        torch.mul(t2, c2, out=out2).addcmul_(t1, s1, value=-1)
    else:  # t1*c1 - t2*s1, t2*c2 + t1*s2
        torch.mul(t1, c1, out=out1).addcmul_(t2, s1, value=-1)
        torch.mul(t2, c2, out=out2).addcmul_(t1, s2)
    if rot_dim < t.shape[-1]:
        out[..., rot_dim:] = t[..., rot_dim:]
    return out


def rotary_torch(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """The rotate-half RoPE as one autograd function (no rotated copy, nothing of ``t`` saved)."""
    if freqs.shape[-1] % 2:
        return rotary_reference(t, freqs, mscale)
    cos, sin = _cos_sin(freqs, mscale, t.dtype)
    if not torch.is_grad_enabled():  # inference: the same rotation without the autograd function's overhead
        return _rotate(t, cos, sin, inverse=False)
    return _RotateHalfFunction.apply(t, cos, sin)


def rotary_cuda(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """flash-attn's fused rotary kernel when installed (needs ``freqs`` = [s, 1, 1, d_rot] of halves
    duplicated, as megatron builds them), else :func:`rotary_torch`."""
    try:
        from flash_attn.layers.rotary import apply_rotary_emb
    except Exception:  # noqa: BLE001 - absent or broken CUDA extension
        return rotary_torch(t, freqs, mscale)
    if t.dim() != 4 or freqs.dim() != 4 or freqs.shape[1] != 1:
        return rotary_torch(t, freqs, mscale)
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
    return rotary_torch(t, freqs, mscale)
