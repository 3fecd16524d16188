"""Rotary embedding: every path against megatron's own ``_apply_rotary_pos_emb_bshd`` in float64."""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from mindspeed_llm.ops.rope import apply_rotary_pos_emb, rotary_cuda, rotary_reference, rotary_torch
from tests.helpers.numerics import DTYPE_TOL, rel_err
from tests.ops.fake_torch_npu import FakeTorchNpuForTests

S, B, N, D = 12, 2, 3, 16


def _megatron_rope_original():
    """megatron's function even while a feature patch wraps it (the wrapper keeps it as __wrapped__)."""
    fn = rope_utils._apply_rotary_pos_emb_bshd
    return getattr(fn, "__wrapped__", fn)


def _inputs(rot_dim=D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(S, B, N, D, generator=gen, dtype=torch.float64)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.outer(torch.arange(S, dtype=torch.float64), inv_freq)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]  # megatron's [s, 1, 1, d_rot]
    return t, freqs


@pytest.mark.parametrize("rot_dim", [D, D // 2])
@pytest.mark.parametrize("mscale", [1.0, 1.3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_reference_matches_megatron(rot_dim, mscale, dtype):
    t64, freqs = _inputs(rot_dim)
    want = _megatron_rope_original()(t64, freqs, mscale=mscale)
    got = rotary_reference(t64.to(dtype), freqs, mscale)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    else:
        assert rel_err(got, want) <= DTYPE_TOL[dtype]


@pytest.mark.parametrize("rot_dim", [D, D // 2])
@pytest.mark.parametrize("mscale", [1.0, 1.3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_function_forward_and_backward_match_megatron(rot_dim, mscale, dtype):
    t64, freqs = _inputs(rot_dim)
    grad_out = torch.randn(t64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t_ref = t64.clone().requires_grad_()
    want = _megatron_rope_original()(t_ref, freqs, mscale=mscale)
    (want_grad,) = torch.autograd.grad(want, t_ref, grad_out)
    t = t64.to(dtype).requires_grad_()
    got = rotary_torch(t, freqs, mscale)
    (got_grad,) = torch.autograd.grad(got, t, grad_out.to(dtype))
    assert got.dtype == got_grad.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-13)
    else:
        assert rel_err(got, want) <= DTYPE_TOL[dtype]
        assert rel_err(got_grad, want_grad) <= DTYPE_TOL[dtype]


def test_torch_function_keeps_only_the_tables_for_backward():
    t, freqs = _inputs()
    out = rotary_torch(t.requires_grad_(), freqs)
    saved = [x for x in out.grad_fn.saved_tensors]
    assert [x.shape for x in saved] == [freqs.shape, freqs.shape]  # cos and sin, not the [s, b, n, d] input


def test_dispatch_on_cpu_is_the_torch_function():
    t, freqs = _inputs()
    t.requires_grad_()
    out = apply_rotary_pos_emb(t, freqs)
    assert type(out.grad_fn).__name__ == "_RotateHalfFunctionBackward"
    torch.testing.assert_close(out, rotary_reference(t, freqs))


def test_cuda_path_without_flash_attn_falls_back_to_torch_function():
    t, freqs = _inputs()
    torch.testing.assert_close(rotary_cuda(t, freqs), rotary_reference(t, freqs))


@pytest.mark.parametrize("rot_dim", [D, D // 2])
def test_npu_path_plumbing(rot_dim):
    fake = FakeTorchNpuForTests()
    t, freqs = _inputs(rot_dim)
    out = apply_rotary_pos_emb(t, freqs, mscale=1.1, backend="npu", torch_npu=fake)
    torch.testing.assert_close(out, _megatron_rope_original()(t, freqs, mscale=1.1))
    call = fake.last("npu_rotary_mul")
    assert call["rotary_mode"] == "half"
    assert call["input"].shape == (S, B, N, rot_dim)
    torch.testing.assert_close(call["r1"], torch.cos(freqs) * 1.1)  # r1 = cos
    torch.testing.assert_close(call["r2"], torch.sin(freqs) * 1.1)  # r2 = sin
