"""RMSNorm: the op per device and megatron-compatible norm modules that support sequence parallelism.

``rms_norm_reference`` computes in float32 (float64 for float64 input) and casts back before the
weight, like Llama/Qwen's reference ``RMSNorm``. The fused paths: ``torch.nn.functional.rms_norm``
on CUDA, ``torch_npu.npu_rms_norm`` on Ascend, and on the CPU (where ``F.rms_norm`` is a composite of
about a dozen autograd ops) :func:`rms_norm_torch_function`: one autograd function that computes in
float32, keeps only the input and one ``rstd`` per row for backward, and rounds the output once.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor

from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.npu import require_torch_npu


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, in at least float32."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_torch_fused(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.rms_norm`` (the CUDA path)."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def _rms_norm_forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(the normalised output, rstd per row): float32 math, one rounding."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    mean_square = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    rstd = mean_square.add_(eps).rsqrt_()
    return (xf * rstd).mul_(weight.to(compute)).to(torch.promote_types(x.dtype, weight.dtype)), rstd


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        out, rstd = _rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, rstd = ctx.saved_tensors
        compute = rstd.dtype
        normed = x * rstd  # in the compute dtype (type promotion)
        grad = grad_out.to(compute, copy=True)
        grad_weight = (grad * normed).sum(dim=tuple(range(grad.dim() - 1))).to(weight.dtype)
        grad.mul_(weight.to(compute))  # d loss / d normed
        # d normed_i / d x_j = rstd * (delta_ij - normed_i * normed_j / n)
        dot = (grad * normed).mean(dim=-1, keepdim=True)
        grad_x = grad.sub_(normed.mul_(dot)).mul_(rstd)
        return grad_x.to(x.dtype), grad_weight, None


def rms_norm_torch_function(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm as one autograd function (the CPU path): float32 math, one rounding, small saved state."""
    if not torch.is_grad_enabled():  # inference: the same math without the autograd function's overhead
        return _rms_norm_forward(x, weight, eps)[0]
    return _RMSNormFunction.apply(x, weight, eps)


def rms_norm_npu(x: Tensor, weight: Tensor, eps: float = 1e-5, torch_npu: Any = None) -> Tensor:
    """``torch_npu.npu_rms_norm(x, gamma, epsilon)``; its first output is the result (the second is rstd)."""
    npu = require_torch_npu(torch_npu, "rms_norm")
    return npu.npu_rms_norm(x, weight, epsilon=eps)[0]


def rms_norm(
    x: Tensor, weight: Tensor, eps: float = 1e-5, backend: str | None = None, torch_npu: Any = None
) -> Tensor:
    """The fused RMSNorm for ``x``'s device (``backend`` forces 'torch', 'cuda' or 'npu')."""
    kind = resolve_backend(x, backend)
    if kind == "npu":
        return rms_norm_npu(x, weight, eps, torch_npu=torch_npu)
    if kind == "cuda":
        return rms_norm_torch_fused(x, weight, eps)
    return rms_norm_torch_function(x, weight, eps)


class RMSNorm(torch.nn.Module):
    """RMSNorm with megatron's norm constructor ``(config, hidden_size, eps=1e-5, ...)``.

    Parameter ``weight`` (same state-dict key as ``torch.nn.RMSNorm``). Under
    ``config.sequence_parallel`` the weight is marked ``sequence_parallel`` so megatron all-reduces
    its gradient across the tensor-parallel group. ``config.layernorm_zero_centered_gamma`` stores
    ``weight - 1``. ``kernel`` is the function applied; the ``--use-fused-rmsnorm`` feature patch
    swaps it for the device's fused kernel.
    """

    kernel = staticmethod(rms_norm_reference)

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.eps = eps
        self.zero_centered_gamma = bool(config.layernorm_zero_centered_gamma or zero_centered_gamma)
        init = torch.zeros if self.zero_centered_gamma else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight + 1 if self.zero_centered_gamma else self.weight
        return type(self).kernel(x, weight, self.eps)

    def extra_repr(self) -> str:
        kernel = type(self).kernel
        return f"{self.hidden_size}, eps={self.eps}, kernel={getattr(kernel, '__name__', kernel)}"


class MegatronNorm:
    """Stands in for megatron's ``WrappedTorchNorm``: builds the norm ``config.normalization`` names.

    'RMSNorm' -> :class:`RMSNorm`; 'LayerNorm' -> ``torch.nn.LayerNorm``. Unlike ``WrappedTorchNorm``
    both support ``config.sequence_parallel`` (their parameters are marked for the TP all-reduce).
    """

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        if config.normalization == "RMSNorm":
            return RMSNorm(config, hidden_size, eps, zero_centered_gamma=zero_centered_gamma)
        if config.normalization != "LayerNorm":
            raise ValueError(
                f"normalization={config.normalization!r}: the local spec supports LayerNorm and RMSNorm"
            )
        if config.layernorm_zero_centered_gamma or zero_centered_gamma:
            raise ValueError(
                "--apply-layernorm-1p (zero-centered gamma) is not supported with LayerNorm in the local spec"
            )
        norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = bool(config.sequence_parallel)
        return norm
