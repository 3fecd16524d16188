"""SwiGLU: ``silu(gate) * up`` for input ``[..., 2f] = [gate; up]`` (megatron's ``swiglu`` semantics).

The torch path is an autograd function that saves only its input and recomputes in backward, as
megatron's fused ``SwiGLUFunction`` does, but without TorchScript/torch.compile (which need a
compiler on CPU). On Ascend, ``torch_npu.npu_swiglu(x, dim=-1)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.npu import require_torch_npu


def swiglu_reference(x: Tensor) -> Tensor:
    """``silu(x[..., :f]) * x[..., f:]`` with plain autograd."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return swiglu_reference(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        gate, up = torch.chunk(x, 2, dim=-1)
        # Both halves are written straight into one gradient tensor (no cat); aten's silu_backward
        # computes d silu / d gate = sig * (1 + gate * (1 - sig)) in one pass, in float32 for bf16.
        grad = torch.empty_like(x)
        grad_gate, grad_up = torch.chunk(grad, 2, dim=-1)
        torch.mul(grad_out, F.silu(gate), out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad_out * up, gate, grad_input=grad_gate)
        return grad


def swiglu_torch(x: Tensor) -> Tensor:
    """Memory-frugal SwiGLU in torch (saves only ``x``); the CPU and CUDA path."""
    return _SwiGLUFunction.apply(x)


def swiglu_npu(x: Tensor, torch_npu: Any = None) -> Tensor:
    """``torch_npu.npu_swiglu(x, dim=-1)``."""
    npu = require_torch_npu(torch_npu, "swiglu")
    return npu.npu_swiglu(x, dim=-1)


def swiglu(x: Tensor, backend: str | None = None, torch_npu: Any = None) -> Tensor:
    """SwiGLU with the implementation for ``x``'s device (``backend`` forces 'torch', 'cuda' or 'npu')."""
    if resolve_backend(x, backend) == "npu":
        return swiglu_npu(x, torch_npu=torch_npu)
    return swiglu_torch(x)


def bias_swiglu(
    x: Tensor, bias: Tensor | None = None, backend: str | None = None, torch_npu: Any = None
) -> Tensor:
    """``swiglu(x + bias)`` (no bias when None)."""
    return swiglu(x if bias is None else x + bias, backend=backend, torch_npu=torch_npu)


# megatron's fused SwiGLU kernels (fusions/fused_bias_swiglu.py) go through torch.compile, which on
# the CPU builds C++ for seconds per process and again for each new shape. These are the same four
# functions in eager torch, computed as the compiled kernels compute them: in float32, rounded to the
# input's dtype once at the end, over blocks of rows (the compiled kernel's single pass keeps its
# temporaries in registers; here they stay cache-sized instead of whole float32 copies). Measured
# against megatron's compiled kernels (torch 2.13, CPU): equal bit for bit in bf16, and in fp32 when
# the last dimension is a multiple of the vector width (16); odd widths differ by one ulp where the
# compiled kernel takes its scalar tail path.
_BLOCK_ELEMENTS = 1 << 16


def _float32_row_blocks(y2d: Tensor, bias: Tensor | None):
    """(start, end, rows start:end of ``y2d`` in float32 plus the bias): cache-sized blocks of rows."""
    rows, width = y2d.shape
    step = max(1, _BLOCK_ELEMENTS // max(width, 1))
    bias32 = None if bias is None else bias.float()
    for i in range(0, rows, step):
        block = y2d[i:i + step].float()
        yield i, i + block.shape[0], block if bias32 is None else block + bias32


def _megatron_swiglu_fwd(y: Tensor, bias: Tensor | None) -> Tensor:
    f = y.shape[-1] // 2
    y2d = y.reshape(-1, y.shape[-1])
    out = torch.empty(y2d.shape[0], f, dtype=y.dtype, device=y.device)
    for i, j, block in _float32_row_blocks(y2d, bias):
        result = F.silu(block[:, :f])
        out[i:j] = result.mul_(block[:, f:])
    return out.view(*y.shape[:-1], f)


def _megatron_swiglu_bwd(g: Tensor, y: Tensor, bias: Tensor | None) -> Tensor:
    f = y.shape[-1] // 2
    y2d, g2d = y.reshape(-1, y.shape[-1]), g.reshape(-1, f)
    out = torch.empty_like(y2d)
    for i, j, block in _float32_row_blocks(y2d, bias):
        grad = g2d[i:j].float()
        gate, up = block[:, :f], block[:, f:]
        sig = torch.sigmoid(gate)
        # megatron's formula, g * sig * (1 + gate * (1 - sig)) * up, left to right (not aten's
        # silu_backward, which rounds differently); products are commutative, so in place is exact.
        slope = torch.rsub(sig, 1).mul_(gate).add_(1)
        out[i:j, :f] = sig.mul_(grad).mul_(slope).mul_(up)
        out[i:j, f:] = F.silu(gate).mul_(grad)
    return out.view(y.shape)


def megatron_swiglu(y: Tensor) -> Tensor:
    """megatron's ``swiglu``: ``silu(y1) * y2`` in float32, one rounding."""
    return _megatron_swiglu_fwd(y, None)


def megatron_bias_swiglu(y: Tensor, bias: Tensor) -> Tensor:
    """megatron's ``bias_swiglu``: the bias is added in float32, not rounded before the SwiGLU."""
    return _megatron_swiglu_fwd(y, bias)


def megatron_swiglu_back(g: Tensor, y: Tensor) -> Tensor:
    """megatron's ``swiglu_back``: d/dy of ``swiglu(y)`` times ``g``, in float32, one rounding."""
    return _megatron_swiglu_bwd(g, y, None)


def megatron_bias_swiglu_back(g: Tensor, y: Tensor, bias: Tensor) -> Tensor:
    """megatron's ``bias_swiglu_back``: :func:`megatron_swiglu_back` at ``y + bias`` (sum in float32)."""
    return _megatron_swiglu_bwd(g, y, bias)
