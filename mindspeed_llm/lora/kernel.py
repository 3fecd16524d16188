"""An adapted linear layer over a frozen base weight as one autograd function (TP1, float32, no dropout).

The unfused layer (``lora/layers.py``) runs megatron's frozen-weight linear, then ``A x``, ``B (A x)``, a
multiplication by the scaling and an addition: three passes over the ``[tokens, out]`` output besides the
products, and in backward a scaled copy of the incoming gradient and the sum of the two input gradients.
:func:`lora_linear` writes the base product and adds ``scaling * (A x) B^T`` into it with one ``addmm_``
(BLAS's ``C += alpha A B``); backward writes the input gradient ``g W`` and adds ``(g B s) A`` into it the
same way, and takes the factors' gradients from the ``[tokens, r]`` product ``g B`` alone:

    y = x W^T + b + s (x A^T) B^T
    dB = s g^T (x A^T),  dA = s (g B)^T x,  dx = g W + s (g B) A

What it saves for backward: ``x`` and ``x A^T`` (the unfused layer saves the same two for its factors'
products). Equal to the unfused layer up to float32 rounding (BLAS adds into its output instead of
rounding the product first; exactly equal when the scaling is a power of two and there is no bias, except
for that addition): tests/lora/test_kernel.py holds it to peft's layer within a relative 1e-6.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, a: Tensor, b: Tensor,
                scaling: float) -> Tensor:
        rows = x.reshape(-1, x.size(-1))
        h = torch.mm(rows, a.t())
        y = torch.addmm(bias, rows, weight.t()) if bias is not None else torch.mm(rows, weight.t())
        y.addmm_(h, b.t(), alpha=scaling)
        ctx.save_for_backward(rows, h, weight, a, b)
        ctx.scaling = scaling
        ctx.in_shape = x.shape
        return y.view(*x.shape[:-1], y.size(-1))

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        rows, h, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.size(-1))
        gh = torch.mm(g, b).mul_(s)  # [tokens, r]
        grad_x = grad_bias = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, weight).addmm_(gh, a).view(ctx.in_shape)
        if ctx.needs_input_grad[2]:
            grad_bias = g.sum(dim=0)
        if ctx.needs_input_grad[3]:
            grad_a = torch.mm(gh.t(), rows)
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(g.t(), h).mul_(s)
        return grad_x, None, grad_bias, grad_a, grad_b, None


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, a: Tensor, b: Tensor,
                scaling: float) -> Tensor:
    """``x W^T + bias + scaling * (x A^T) B^T`` for a frozen ``weight`` (``[out, in]``; its gradient is not
    computed), with ``a`` ``[r, in]`` and ``b`` ``[out, r]``."""
    if weight.requires_grad:
        raise ValueError("lora_linear is for a frozen base weight: its gradient is not computed")
    return _LoraLinear.apply(x, weight, bias, a, b, scaling)
