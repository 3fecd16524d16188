"""bf16 linear layers on CPUs without bf16 matrix instructions: products in fp32, rounded to bf16 once.

torch multiplies bf16 matrices on the CPU with oneDNN's bf16 kernels only where the CPU has bf16
instructions (AVX-512 BF16 or AMX: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). Elsewhere (AVX2
CPUs) it falls back to a reference loop: on this project's 2-core AMD EPYC machine one
``[128, 151936] @ [151936, 128]`` product (a tiny Qwen's output layer, backward) took 26 s in bf16
against 0.13 s in fp32, and the quick start's bf16 training step took about 50 s instead of under 1 s.
Both torch paths accumulate in fp32 and round the product to bf16 once, so computing the product in
fp32 from the same bf16 values and rounding once is the same arithmetic (up to the order of the
additions); the weight's and the input's gradients come back in bf16 as before (autograd rounds them
once on the way back through the casts).

:func:`fp32_products` wraps megatron-core's two linear functions (trainable and frozen weights);
:mod:`mindspeed_llm.patches.features` registers it in the CPU base patches only when
:func:`native_bf16_matmul` is False.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def native_bf16_matmul() -> bool:
    """True when torch multiplies bf16 matrices on this CPU with bf16 instructions (oneDNN)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fp32_products(original: Callable) -> Callable:
    """``original(input, weight, bias, gradient_accumulation_fusion, ...)``, bf16 CPU inputs computed in fp32.

    Other dtypes and devices, and gradient-accumulation fusion (which writes ``weight.main_grad``, a
    buffer of the parameter itself), go to ``original`` unchanged.
    """

    @functools.wraps(original)
    def linear(input, weight, bias, gradient_accumulation_fusion, *args, **kwargs):
        if input.dtype is not torch.bfloat16 or input.device.type != "cpu" or gradient_accumulation_fusion:
            return original(input, weight, bias, gradient_accumulation_fusion, *args, **kwargs)
        out = original(
            input.float(),
            weight.float(),
            None if bias is None else bias.float(),
            gradient_accumulation_fusion,
            *args,
            **kwargs,
        )
        return out.to(torch.bfloat16)

    return linear
