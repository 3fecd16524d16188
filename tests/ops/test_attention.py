"""Core attention: every implementation against a float64 dense reference, and the module against
megatron-core's own DotProductAttention."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.ops.attention import FlashDotProductAttention, is_causal_mask
from mindspeed_llm.ops.attention_kernels import (
    attention_math,
    blockwise_attention,
    dropout_multiplier,
    flash_attention,
    npu_fusion_attention,
    sdpa_attention,
    select_attention_impl,
)
from tests.helpers.numerics import DTYPE_TOL, rel_err
from tests.ops.fake_torch_npu import FakeTorchNpuForTests
from tests.ops.megatron_env import single_process_model_parallel
from tests.skip_policy import skip_for_hardware

B, HQ, G, S, D = 2, 6, 2, 40, 16


def _qkv(dtype=torch.float64, s=S, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, s, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, G, s, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, G, s, D, generator=gen, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def _padding_mask(s=S):
    """[b, 1, s, s], True = masked: batch 1 pads its last 7 keys and its first query row sees nothing."""
    mask = torch.zeros(B, 1, s, s, dtype=torch.bool)
    mask[1, :, :, s - 7:] = True
    mask[1, :, 0, :] = True
    return mask


IMPLS = {
    "blockwise": lambda q, k, v, **kw: blockwise_attention(q, k, v, block_q=16, block_k=12, **kw),
    "blockwise_one_block": lambda q, k, v, **kw: blockwise_attention(q, k, v, block_q=64, block_k=64, **kw),
    "sdpa": sdpa_attention,
    "auto_sbnd": lambda q, k, v, **kw: flash_attention(
        *(t.permute(2, 0, 1, 3) for t in (q, k, v)), layout="sbnd", **kw).permute(1, 2, 0, 3),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "causal", "padding", "causal+padding"])
def test_matches_float64_reference(impl, dtype, case):
    causal = "causal" in case
    mask = _padding_mask() if "padding" in case else None
    q64, k64, v64 = _qkv()
    ref = attention_math(q64, k64, v64, causal=causal, attn_mask=mask, softmax_scale=0.3)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad)
    q, k, v = _qkv(dtype)
    out = IMPLS[impl](q, k, v, causal=causal, attn_mask=mask, softmax_scale=0.3)
    assert out.dtype == dtype and out.shape == ref.shape
    grads = torch.autograd.grad(out, (q, k, v), grad.to(dtype))
    assert rel_err(out, ref) <= DTYPE_TOL[dtype]
    for got, want in zip(grads, ref_grads):
        assert got.shape == want.shape
        assert rel_err(got, want) <= DTYPE_TOL[dtype] * (3 if dtype == torch.bfloat16 else 1)


def test_fully_masked_rows_give_zeros_and_no_nan():
    q, k, v = _qkv(torch.float32)
    mask = _padding_mask()
    for impl in ("blockwise", "sdpa"):
        out = IMPLS[impl](q, k, v, attn_mask=mask)
        assert torch.isfinite(out).all()
        assert out[1, :, 0].abs().max() == 0
        (gq, gk, gv) = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in (gq, gk, gv))


def test_gqa_equals_repeated_heads():
    q, k, v = _qkv(torch.float64)
    rep = HQ // G
    ref = blockwise_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=True, block_q=8, block_k=8
    )
    out = blockwise_attention(q, k, v, causal=True, block_q=8, block_k=8)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _full_dropout_scale(seed, p, b, g, r, s):
    """The dropout multiplier of every (query, key) pair, laid out as [b, g*r, s, s]."""
    pos = torch.arange(s)
    return dropout_multiplier(seed, b, torch.arange(g * r), pos, pos, p, torch.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_is_exact_against_reference_with_the_same_mask(causal):
    p, seed = 0.3, 1234
    q, k, v = _qkv(torch.float64)
    out = blockwise_attention(q, k, v, causal=causal, dropout_p=p, seed=seed, block_q=16, block_k=32)
    z = _full_dropout_scale(seed, p, B, G, HQ // G, S)
    ref = attention_math(q, k, v, causal=causal, dropout_keep=z, dropout_p=0.0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ref)
    for got, want in zip(
        torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_dropout_statistics_and_seed():
    p = 0.25
    z = dropout_multiplier(7, 2, torch.arange(4), torch.arange(64), torch.arange(512), p)
    dropped = (z == 0).float().mean().item()
    assert abs(dropped - p) < 0.01
    # Neighbouring rows, columns and heads decide independently (no shared pattern).
    for a, b in (
        (z[:, :, 1:], z[:, :, :-1]),
        (z[..., 1:], z[..., :-1]),
        (z[:, 1:], z[:, :-1]),
        (z[1:], z[:-1]),
    ):
        both = ((a == 0) & (b == 0)).float().mean().item()
        assert abs(both - p * p) < 0.01
    assert torch.allclose(z[z != 0], torch.tensor(1 / (1 - p)))
    q, k, v = _qkv(torch.float32)
    a = blockwise_attention(q, k, v, causal=True, dropout_p=p, seed=11, block_q=16, block_k=16)
    b = blockwise_attention(q, k, v, causal=True, dropout_p=p, seed=11, block_q=16, block_k=16)
    c = blockwise_attention(q, k, v, causal=True, dropout_p=p, seed=12, block_q=16, block_k=16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = flash_attention(q, k, v, causal=True, dropout_p=p)  # auto: blockwise on CPU with dropout
    torch.manual_seed(5)
    e = flash_attention(q, k, v, causal=True, dropout_p=p)
    assert torch.equal(d, e)


def test_selection_per_device():
    q = torch.zeros(1, 2, 4, 8)
    assert select_attention_impl(q, attn_mask=None, dropout_p=0.0) == "sdpa"
    assert select_attention_impl(q, attn_mask=None, dropout_p=0.1) == "blockwise"
    assert select_attention_impl(q, attn_mask=None, dropout_p=0.0, backend="npu") == "npu"
    assert select_attention_impl(q, attn_mask=None, dropout_p=0.1, backend="cuda") == "sdpa"


def test_is_causal_mask():
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    assert is_causal_mask(causal[None, None].expand(3, 1, 5, 5), 5, 5)
    other = causal.clone()
    other[4, 0] = True
    assert not is_causal_mask(other, 5, 5)


# --- NPU plumbing (no Ascend hardware here: a named stand-in records the calls) ----------------


@pytest.mark.parametrize("layout", ["sbnd", "bnsd"])
@pytest.mark.parametrize("case", ["causal", "padding", "causal+padding", "none"])
def test_npu_path_plumbing(layout, case):
    fake = FakeTorchNpuForTests()
    causal = "causal" in case
    mask = _padding_mask() if "padding" in case else None
    q, k, v = _qkv(torch.float64)
    ref = attention_math(q, k, v, causal=causal, attn_mask=mask, softmax_scale=0.2)
    args = (q, k, v) if layout == "bnsd" else tuple(t.permute(2, 0, 1, 3) for t in (q, k, v))
    out = flash_attention(*args, causal=causal, attn_mask=mask, softmax_scale=0.2, layout=layout,
                          backend="npu", torch_npu=fake)
    if layout == "sbnd":
        out = out.permute(1, 2, 0, 3)
    torch.testing.assert_close(out, ref)
    call = fake.last("npu_fusion_attention")
    assert call["head_num"] == HQ
    assert call["input_layout"] == ("SBH" if layout == "sbnd" else "BNSD")
    if layout == "sbnd":
        assert call["query"].shape == (S, B, HQ * D) and call["key"].shape == (S, B, G * D)
    assert call["scale"] == 0.2 and call["keep_prob"] == 1.0
    if case == "causal":
        assert call["sparse_mode"] == 2
        mask2048 = call["atten_mask"]
        assert mask2048.shape == (2048, 2048) and mask2048.dtype == torch.bool
        assert mask2048[0, 1] and not mask2048[1, 0] and not mask2048[5, 5]
    else:
        assert call["sparse_mode"] == 0
        if mask is None:
            assert call["atten_mask"] is None


def test_npu_keep_prob_is_one_minus_dropout():
    calls = []

    class RecordingFake(FakeTorchNpuForTests):
        def npu_fusion_attention(self, query, key, value, head_num, input_layout, **kwargs):
            calls.append(kwargs)
            return (torch.zeros_like(query),)

    q, k, v = _qkv(torch.float32)
    npu_fusion_attention(q, k, v, causal=True, dropout_p=0.1, torch_npu=RecordingFake())
    assert calls[0]["keep_prob"] == pytest.approx(0.9)


def test_npu_path_without_torch_npu_says_what_to_do():
    q, k, v = _qkv(torch.float32)
    from mindspeed_llm.ops.npu import get_torch_npu

    if get_torch_npu() is not None:
        skip_for_hardware("torch_npu is importable here: this checks the message on machines without it")
    with pytest.raises(RuntimeError, match="torch_npu"):
        flash_attention(q, k, v, backend="npu")


# --- the megatron module ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def megatron_env():
    with single_process_model_parallel():
        yield


def _config(**overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = dict(num_layers=1, hidden_size=64, num_attention_heads=8, num_query_groups=2, kv_channels=16,
                  attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def _pair(config, mask_type, **kwargs):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    args = dict(config=config, layer_number=3, attn_mask_type=mask_type, attention_type="self", **kwargs)
    return DotProductAttention(**args), FlashDotProductAttention(**args)


def _sbnd(s, b, n, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(s, b, n, d, generator=gen).to(dtype).requires_grad_()


@pytest.mark.parametrize(
    "case", ["causal", "causal_given_mask", "padding", "no_mask", "layer_scaling", "scale"]
)
def test_module_equals_megatron_dot_product_attention(megatron_env, case):
    from megatron.core.transformer.enums import AttnMaskType

    s, b = 24, 2
    config = _config(apply_query_key_layer_scaling=case == "layer_scaling")
    mask_type = (
        AttnMaskType.causal
        if case.startswith("causal") or case in ("layer_scaling", "scale")
        else AttnMaskType.padding
    )
    megatron, ours = _pair(config, mask_type, softmax_scale=0.11 if case == "scale" else None)
    q, k, v = _sbnd(s, b, 8, 16, 1), _sbnd(s, b, 2, 16, 2), _sbnd(s, b, 2, 16, 3)
    mask = None
    if case == "causal_given_mask":
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None].expand(b, 1, s, s)
    elif case == "padding":
        mask = torch.zeros(b, 1, s, s, dtype=torch.bool)
        mask[0, :, :, 19:] = True
    want = megatron(q, k, v, mask)
    got = ours(q, k, v, mask)
    assert got.shape == want.shape == (s, b, 8 * 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(want)
    for g_ours, g_meg in zip(
        torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)
    ):
        torch.testing.assert_close(g_ours, g_meg, rtol=1e-5, atol=1e-5)


def test_module_bf16_close_to_megatron(megatron_env):
    from megatron.core.transformer.enums import AttnMaskType

    s, b = 32, 1
    megatron, ours = _pair(_config(bf16=True, params_dtype=torch.bfloat16), AttnMaskType.causal)
    q, k, v = (_sbnd(s, b, n, 16, i, torch.bfloat16) for i, n in ((1, 8), (2, 2), (3, 2)))
    want, got = megatron(q, k, v, None), ours(q, k, v, None)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want.double()) <= 1e-2


def test_module_dropout_uses_megatron_rng_tracker(megatron_env):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.enums import AttnMaskType

    s, b = 16, 1
    _, ours = _pair(_config(attention_dropout=0.5), AttnMaskType.causal)
    q, k, v = _sbnd(s, b, 8, 16, 1), _sbnd(s, b, 2, 16, 2), _sbnd(s, b, 2, 16, 3)
    ours.eval()
    clean = ours(q, k, v, None)
    ours.train()
    model_parallel_cuda_manual_seed(77)
    first = ours(q, k, v, None)
    model_parallel_cuda_manual_seed(77)
    again = ours(q, k, v, None)
    second = ours(q, k, v, None)
    assert torch.equal(first, again)
    assert not torch.equal(first, second) and not torch.allclose(first, clean)
    assert first.shape == clean.shape


def test_module_rejects_what_it_does_not_support(megatron_env):
    from megatron.core.transformer.enums import AttnMaskType

    with pytest.raises(NotImplementedError, match="softmax_type"):
        _pair(_config(softmax_type="off-by-one"), AttnMaskType.causal)
