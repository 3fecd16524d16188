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


def bias_swiglu(x: Tensor, bias: Tensor | None = None, backend: str | None = None, torch_npu: Any = None) -> Tensor:
    """``swiglu(x + bias)`` (no bias when None)."""
    return swiglu(x if bias is None else x + bias, backend=backend, torch_npu=torch_npu)
