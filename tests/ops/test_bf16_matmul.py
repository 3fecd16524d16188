"""bf16 linear layers on CPUs without bf16 matrix instructions: fp32 products rounded once.

(mindspeed_llm/ops/bf16_matmul.py)

The reference is the arithmetic written out: the fp32 product of the bf16 values, rounded to bf16 once
(what torch's bf16 GEMM computes, up to the order of the additions), for the output and both gradients.
"""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.ops.bf16_matmul import fp32_products, native_bf16_matmul
from tests.ops.megatron_env import single_process_model_parallel


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(torch.bfloat16)


@pytest.mark.parametrize("frozen", [False, True])
def test_megatron_linear_in_bf16_is_the_fp32_product_rounded_once(frozen: bool) -> None:
    from megatron.core.tensor_parallel import layers

    x, w, b = _bf16(2, 5, 48, seed=1), _bf16(96, 48, seed=2), _bf16(96, seed=3)
    grad = _bf16(2, 5, 96, seed=4)
    with single_process_model_parallel():
        fn = (
            layers.linear_with_frozen_weight
            if frozen
            else layers.linear_with_grad_accumulation_and_async_allreduce
        )
        # patched on this machine exactly when it has no bf16 matrix instructions
        assert (getattr(fn, "__wrapped__", None) is not None) == (not native_bf16_matmul())
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_(not frozen)
        args = (None,) if frozen else ()  # linear_with_frozen_weight takes tp_group positionally
        out = fp32_products(fn.__wrapped__ if hasattr(fn, "__wrapped__") else fn)(
            xi, wi, b, False, False, False, *args
        )
        out.backward(grad)
    assert out.dtype == torch.bfloat16
    expected = (x.float() @ w.float().t() + b.float()).to(torch.bfloat16)
    assert torch.equal(out, expected)
    assert torch.equal(xi.grad, (grad.float() @ w.float()).to(torch.bfloat16))
    if not frozen:
        assert torch.equal(
            wi.grad, (grad.float().reshape(-1, 96).t() @ x.float().reshape(-1, 48)).to(torch.bfloat16)
        )
    # torch's own bf16 product: the same arithmetic up to the order of the additions (and the bias rounding)
    native = x @ w.t() + b
    assert (out.float() - native.float()).abs().max() <= 0.0625 * native.float().abs().max()


def test_other_dtypes_and_fused_accumulation_go_to_megatron_unchanged() -> None:
    seen = []

    def original(input, weight, bias, gradient_accumulation_fusion, *rest):
        seen.append((input.dtype, weight.dtype, gradient_accumulation_fusion))
        return input @ weight.t()

    wrapped = fp32_products(original)
    wrapped(torch.ones(2, 3), torch.ones(4, 3), None, False, False, False)
    wrapped(
        torch.ones(2, 3, dtype=torch.bfloat16),
        torch.ones(4, 3, dtype=torch.bfloat16),
        None,
        True,
        False,
        False,
    )
    wrapped(
        torch.ones(2, 3, dtype=torch.bfloat16),
        torch.ones(4, 3, dtype=torch.bfloat16),
        None,
        False,
        False,
        False,
    )
    assert seen == [
        (torch.float32, torch.float32, False),
        (torch.bfloat16, torch.bfloat16, True),
        (torch.float32, torch.float32, False),
    ]
