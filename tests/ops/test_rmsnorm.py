"""RMSNorm: op paths against float64, the megatron-compatible modules, and NPU plumbing."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from mindspeed_llm.ops.rmsnorm import (
    MegatronNorm,
    RMSNorm,
    rms_norm,
    rms_norm_reference,
    rms_norm_torch_function,
    rms_norm_torch_fused,
)
from tests.helpers.numerics import DTYPE_TOL, rel_err
from tests.ops.fake_torch_npu import FakeTorchNpuForTests


def _float64_rms(x, w, eps):
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _inputs(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 64, generator=gen, dtype=torch.float64) * 3
    w = torch.rand(64, generator=gen, dtype=torch.float64) + 0.5
    return x.to(dtype), w.to(dtype)


def _config(**overrides):
    kwargs = dict(num_layers=1, hidden_size=64, num_attention_heads=4, normalization="RMSNorm")
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


@pytest.mark.parametrize("fn", [rms_norm_reference, rms_norm_torch_fused, rms_norm_torch_function, rms_norm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paths_match_float64(fn, dtype):
    x, w = _inputs(dtype)
    out = fn(x, w, 1e-6)
    assert out.dtype == dtype
    assert rel_err(out, _float64_rms(x, w, 1e-6)) <= DTYPE_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_function_gradients_match_float64(dtype):
    x, w = _inputs(dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    want_x, want_w = torch.autograd.grad(_float64_rms(x64, w64, 1e-6), (x64, w64), grad_out)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = rms_norm_torch_function(xs, ws, 1e-6)
    assert [t.shape for t in out.grad_fn.saved_tensors] == [x.shape, w.shape, (*x.shape[:-1], 1)]
    got_x, got_w = torch.autograd.grad(out, (xs, ws), grad_out.to(dtype))
    assert got_x.dtype == got_w.dtype == dtype
    tol = {torch.float64: 1e-12, **DTYPE_TOL}[dtype]
    assert rel_err(got_x, want_x) <= tol and rel_err(got_w, want_w) <= tol


def test_cpu_dispatch_uses_the_function():
    x, w = _inputs(torch.float32)
    out = rms_norm(x.requires_grad_(), w)
    assert type(out.grad_fn).__name__ == "_RMSNormFunctionBackward"


def test_reference_equals_torch_rmsnorm_module():
    x, w = _inputs(torch.float32)
    torch_norm = torch.nn.RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        torch_norm.weight.copy_(w)
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-5), torch_norm(x), rtol=1e-6, atol=1e-6)


def test_module_state_dict_and_sequence_parallel_flag():
    norm = MegatronNorm(_config(), 64, eps=1e-6)
    assert isinstance(norm, RMSNorm) and list(norm.state_dict()) == ["weight"]
    assert norm.weight.sequence_parallel is False
    sp = MegatronNorm(_config(sequence_parallel=True, tensor_model_parallel_size=2), 64)
    assert sp.weight.sequence_parallel is True
    x, _ = _inputs(torch.float32)
    torch.testing.assert_close(norm(x), _float64_rms(x, torch.ones(64), 1e-6).float(), rtol=1e-5, atol=1e-6)


def test_zero_centered_gamma():
    norm = RMSNorm(_config(layernorm_zero_centered_gamma=True), 64)
    assert torch.equal(norm.weight, torch.zeros(64))
    x, _ = _inputs(torch.float32)
    torch.testing.assert_close(norm(x), rms_norm_reference(x, torch.ones(64), 1e-5))


def test_layernorm_config_builds_torch_layernorm_that_supports_sequence_parallel():
    norm = MegatronNorm(
        _config(normalization="LayerNorm", sequence_parallel=True, tensor_model_parallel_size=2), 64
    )
    assert isinstance(norm, torch.nn.LayerNorm)
    assert norm.weight.sequence_parallel and norm.bias.sequence_parallel
    assert set(norm.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_npu_path_passes_input_weight_and_epsilon_unchanged(dtype):
    """What reaches torch_npu.npu_rms_norm: the [s, b, h] input and the weight as they are (no copy, no cast),
    epsilon as given, once; the path returns the op's first output (the normalised tensor), not rstd."""
    fake = FakeTorchNpuForTests()
    x, w = _inputs(dtype)
    out = rms_norm(x, w, 1e-6, backend="npu", torch_npu=fake)
    assert [op for op, _ in fake.calls] == ["npu_rms_norm"]
    call = fake.last("npu_rms_norm")
    assert call["x"] is x and call["gamma"] is w
    assert call["x"].shape == (5, 3, 64) and call["gamma"].shape == (64,)
    assert call["x"].dtype == call["gamma"].dtype == dtype
    assert call["epsilon"] == 1e-6 and isinstance(call["epsilon"], float)
    assert out is call["returned"][0]
