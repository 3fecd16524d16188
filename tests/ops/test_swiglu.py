"""SwiGLU: forward and backward against float64 and megatron's own swiglu; NPU plumbing."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.ops.swiglu import bias_swiglu, swiglu, swiglu_reference, swiglu_torch
from tests.helpers.numerics import DTYPE_TOL, rel_err
from tests.ops.fake_torch_npu import FakeTorchNpuForTests


def _float64_swiglu(x):
    gate, up = x.double().chunk(2, -1)
    return gate * torch.sigmoid(gate) * up


def _x(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 2, 48, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()


@pytest.mark.parametrize("fn", [swiglu_reference, swiglu_torch, swiglu])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_match_float64(fn, dtype):
    x64 = _x(torch.float64)
    want = _float64_swiglu(x64)
    grad = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, x64, grad)
    x = _x(dtype)
    out = fn(x)
    (got_grad,) = torch.autograd.grad(out, x, grad.to(dtype))
    assert out.dtype == dtype and out.shape == (6, 2, 24)
    assert rel_err(out, want) <= DTYPE_TOL[dtype]
    assert rel_err(got_grad, want_grad) <= DTYPE_TOL[dtype]


def test_matches_megatron_swiglu_semantics():
    x = _x(torch.float32)
    gate, up = x.chunk(2, -1)
    torch.testing.assert_close(swiglu_torch(x), torch.nn.functional.silu(gate) * up)
    bias = torch.randn(48, dtype=torch.float32)
    # megatron's bias_swiglu is `swiglu(y + bias)`; its own kernels go through torch.compile (slow to
    # build on CPU), so the test compares with the formula rather than running them.
    torch.testing.assert_close(bias_swiglu(x, bias), swiglu_reference(x + bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_npu_path_passes_the_input_and_dim(dtype):
    """What reaches torch_npu.npu_swiglu: the [s, b, 2f] input as it is (gate first, up second, no copy or
    cast) with dim=-1, once; the path returns the op's output as it is."""
    fake = FakeTorchNpuForTests()
    x = _x(dtype)
    out = swiglu(x, backend="npu", torch_npu=fake)
    assert [op for op, _ in fake.calls] == ["npu_swiglu"]
    call = fake.last("npu_swiglu")
    assert call["x"] is x and call["x"].shape == (6, 2, 48) and call["x"].dtype == dtype
    assert call["dim"] == -1
    assert out is call["returned"]


def test_npu_bias_swiglu_adds_the_bias_before_the_kernel():
    fake = FakeTorchNpuForTests()
    x = _x(torch.float32).detach()
    bias = torch.linspace(-1, 1, 48)
    bias_swiglu(x, bias, backend="npu", torch_npu=fake)
    call = fake.last("npu_swiglu")
    assert call["dim"] == -1
    assert torch.equal(call["x"], x + bias)
    assert fake.calls and len(fake.calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_fused_swiglu_equals_megatrons_compiled_kernels_bit_for_bit(dtype):
    """The ops-cpu patch replaces megatron's torch.compile'd fused-SwiGLU kernels by eager torch; the
    reference is megatron's own compiled kernels (the patch's originals), with and without a bias,
    forward and backward, at a width that is a multiple of the vector length (as model sizes are)."""
    from megatron.core.fusions import fused_bias_swiglu as fused

    from mindspeed_llm.patches.features import CPU_BASE_GROUP, FUSED_SWIGLU_MODULE
    from mindspeed_llm.patches.registry import registry

    patched = {p.target.rsplit(".", 1)[1]: p for p in registry.patches(CPU_BASE_GROUP)
               if p.target.startswith(FUSED_SWIGLU_MODULE) and p.active}
    assert sorted(patched) == ["bias_swiglu", "bias_swiglu_back", "swiglu", "swiglu_back", "weighted_swiglu",
                               "weighted_swiglu_back"]
    assert fused.swiglu is not patched["swiglu"]._original  # megatron's module calls the eager kernels
    gen = torch.Generator().manual_seed(3)
    y = (torch.randn(40, 2, 1024, generator=gen) * 3).to(dtype)  # several row blocks
    g = torch.randn(40, 2, 512, generator=gen).to(dtype)
    bias = torch.randn(1024, generator=gen).to(dtype)
    for name, args in [("swiglu", (y,)), ("bias_swiglu", (y, bias)), ("swiglu_back", (g, y)),
                       ("bias_swiglu_back", (g, y, bias))]:
        want = patched[name]._original(*args)
        got = getattr(fused, name)(*args)
        assert got.dtype == want.dtype and torch.equal(got, want), name


def test_cpu_moe_jit_fusers_run_eagerly():
    """The MoE experts' probability-weighted SwiGLU (forward, backward) and the router's expert-bias update
    are megatron's own bodies run eagerly on the CPU (no torch.compile, which builds C++ in every process);
    the values are the SwiGLU formula by hand."""
    from megatron.core.fusions import fused_bias_swiglu as fused
    from megatron.core.transformer.moe.router import TopKRouter

    import mindspeed_llm  # noqa: F401  (the base patches)

    for fn in (fused.weighted_swiglu, fused.weighted_swiglu_back, TopKRouter._apply_expert_bias):
        assert not hasattr(fn, "__wrapped__"), fn  # not a (deferred) torch.compile wrapper
    gen = torch.Generator().manual_seed(5)
    y, w = torch.randn(6, 8, generator=gen), torch.rand(6, 1, generator=gen)
    g = torch.randn(6, 4, generator=gen)
    a, b = y[:, :4], y[:, 4:]
    assert torch.allclose(fused.weighted_swiglu(y, w), a * torch.sigmoid(a) * b * w, rtol=1e-6, atol=1e-7)
    yr = y.clone().requires_grad_(True)
    ar, br = yr[:, :4], yr[:, 4:]
    (ar * torch.sigmoid(ar) * br * w * g).sum().backward()
    input_grad, weights_grad = fused.weighted_swiglu_back(g, y, w)
    assert torch.allclose(input_grad, yr.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(weights_grad, (a * torch.sigmoid(a) * b * g).sum(-1, keepdim=True), rtol=1e-5,
                          atol=1e-6)
