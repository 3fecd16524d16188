"""Document-masked attention for packed samples: every kernel against a per-document loop of the dense
reference (float64), forward and gradients; the packed-parameter builder against hand-written boundaries;
the NPU path's plumbing through the torch_npu stand-in."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.ops.attention_kernels import attention_math
from mindspeed_llm.ops.document_attention import (
    document_attention,
    document_mask,
    select_document_attention_impl,
)
from mindspeed_llm.ops.packing import (
    check_document_packed,
    document_packed_seq_params,
    document_positions,
    document_rotary_freqs,
)
from tests.helpers.numerics import rel_err
from tests.ops.fake_torch_npu import FakeTorchNpuForTests

HQ, G, D = 6, 2, 16
# Per-sample document lengths (each sample sums to S): odd lengths, documents of length 1, b = 3.
DOCS = [[7, 1, 5, 4], [17], [1, 1, 9, 6]]
S = 17


def _position_ids(docs=DOCS) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in docs])


def _qkv(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = len(DOCS)
    shapes = [(S, b, HQ, D), (S, b, G, D), (S, b, G, D)]
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for shape in shapes
    ]


def _per_document_reference(q, k, v, scale):
    """Each document alone through the dense textbook formula (causal), written back in place: [s, b, n,
    d]."""
    out = torch.zeros_like(q)
    for bi, row in enumerate(DOCS):
        start = 0
        for n in row:
            sl = slice(start, start + n)
            qd, kd, vd = (t[sl, bi].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out[sl, bi] = attention_math(qd, kd, vd, causal=True, softmax_scale=scale)[0].transpose(0, 1)
            start += n
    return out


def test_packed_seq_params_from_position_ids():
    pos = _position_ids()
    psp = document_packed_seq_params(pos)
    assert psp.qkv_format == "sbhd"
    assert psp.cu_seqlens_q.dtype == torch.int32 and psp.cu_seqlens_kv is psp.cu_seqlens_q
    assert psp.cu_seqlens_q.tolist() == [0, 7, 8, 13, 17, 34, 35, 36, 45, 51]
    assert psp.max_seqlen_q == psp.max_seqlen_kv == 17
    # A sample that starts inside a document (no 0 at its start) still starts a document there.
    cont = torch.tensor([[3, 4, 5, 0, 1], [0, 1, 2, 3, 4]])
    assert document_packed_seq_params(cont).cu_seqlens_q.tolist() == [0, 3, 5, 10]
    assert document_positions(psp.cu_seqlens_q).view(3, S).equal(pos)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        document_packed_seq_params(pos[0])


def test_check_document_packed_refuses_bad_boundaries():
    psp = document_packed_seq_params(_position_ids())
    assert check_document_packed(psp, 3, S) is psp.cu_seqlens_q
    with pytest.raises(ValueError, match=r"batch\*seq = 54 \(they run from 0 to 51\)"):
        check_document_packed(psp, 3, S + 1)
    psp.cu_seqlens_q = psp.cu_seqlens_kv = torch.tensor([0, 10, 20, 51], dtype=torch.int32)
    with pytest.raises(ValueError, match="crosses a sample boundary"):
        check_document_packed(psp, 3, S)


def test_rotary_freqs_restart_per_document():
    freqs = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 1, 4)  # angle = position
    psp = document_packed_seq_params(_position_ids())
    got = document_rotary_freqs(freqs, psp.cu_seqlens_q, S)
    assert got.shape == (S, 3, 1, 4)
    assert got[:, :, 0, 0].T.equal(_position_ids().float())


def test_document_mask_is_block_diagonal_causal():
    mask = document_mask(document_packed_seq_params(_position_ids()).cu_seqlens_q, S, 3)
    allowed = ~mask[0, 0]
    assert allowed[6, 0] and not allowed[7, 6] and allowed[7, 7] and not allowed[8, 7] and not allowed[9, 10]
    assert (~mask[1, 0]).equal(torch.ones(S, S, dtype=torch.bool).tril())


@pytest.mark.parametrize("impl", ["per_document", "sdpa_mask", "blockwise_mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_equal_each_document_alone(impl, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    cu = document_packed_seq_params(_position_ids()).cu_seqlens_q
    q64, k64, v64 = _qkv(torch.float64)
    ref = _per_document_reference(q64, k64, v64, 0.3)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad)
    q, k, v = _qkv(dtype)
    out = document_attention(q, k, v, cu, softmax_scale=0.3, impl=impl)
    assert out.shape == ref.shape and out.dtype == dtype
    grads = torch.autograd.grad(out, (q, k, v), grad.to(dtype))
    assert rel_err(out, ref) <= tol
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) <= tol * (1 if dtype == torch.float32 else 3)


def test_per_document_dropout_keeps_documents_apart():
    """With dropout the per-document kernel still sees only its document: a change in another document's
    keys leaves this document's output unchanged under the same seed."""
    cu = document_packed_seq_params(_position_ids()).cu_seqlens_q
    q, k, v = (t.detach() for t in _qkv(torch.float32))
    torch.manual_seed(5)
    out = document_attention(q, k, v, cu, dropout_p=0.3, impl="per_document")
    k2, v2 = k.clone(), v.clone()
    k2[8:, 0] += 1.0
    v2[8:, 0] += 1.0
    torch.manual_seed(5)
    out2 = document_attention(q, k2, v2, cu, dropout_p=0.3, impl="per_document")
    assert torch.equal(out[:8], out2[:8]) and not torch.equal(out[8:, 0], out2[8:, 0])


def test_selection_per_device():
    q = torch.zeros(4, 1, 2, 8)
    assert select_document_attention_impl(q) == "per_document"
    assert select_document_attention_impl(q, backend="npu") == "npu"
    assert select_document_attention_impl(q.bfloat16(), backend="cuda") in (
        "per_document",
        "flash_attn_varlen",
    )
    assert (
        select_document_attention_impl(q.float(), backend="cuda") == "per_document"
    )  # flash-attn: fp16/bf16 only


def test_npu_path_passes_tnd_and_cumulative_ends():
    fake = FakeTorchNpuForTests()
    cu = document_packed_seq_params(_position_ids()).cu_seqlens_q
    q, k, v = (t.detach() for t in _qkv(torch.float32))
    out = document_attention(q, k, v, cu, softmax_scale=0.3, backend="npu", torch_npu=fake)
    call = fake.last("npu_fusion_attention")
    assert call["input_layout"] == "TND" and call["head_num"] == HQ
    assert call["query"].shape == (3 * S, HQ, D) and call["key"].shape == (3 * S, G, D)
    assert torch.equal(call["query"][S:2 * S], q[:, 1])  # token-major: sample 1's tokens follow sample 0's
    # MindSpeed-LLM's convention: cumulative document ends over the flattened tokens, no leading 0.
    assert call["actual_seq_qlen"] == call["actual_seq_kvlen"] == [7, 8, 13, 17, 34, 35, 36, 45, 51]
    assert call["sparse_mode"] == 4 and call["next_tockens"] == 0 and call["atten_mask"].shape == (2048, 2048)
    assert out.shape == q.shape
    assert rel_err(out, _per_document_reference(q.double(), k.double(), v.double(), 0.3)) <= 1e-5


def test_core_attention_refuses_context_parallelism_and_thd():
    from types import SimpleNamespace

    from mindspeed_llm.ops.document_attention import document_core_attention

    module = SimpleNamespace(config=SimpleNamespace(context_parallel_size=2, sequence_parallel=False))
    psp = document_packed_seq_params(_position_ids())
    q, k, v = (t.detach() for t in _qkv(torch.float32))
    with pytest.raises(ValueError, match="run in ContextParallelAttention"):
        document_core_attention(module, q, k, v, None, psp, softmax_scale=0.3, dropout_p=0.0)
    psp.qkv_format = "thd"
    with pytest.raises(ValueError, match="needs Transformer Engine"):
        document_core_attention(module, q, k, v, None, psp, softmax_scale=0.3, dropout_p=0.0)


class FlashAttnStandInForTests:
    """Stands in for the ``flash_attn`` package (CUDA only, absent here): records what
    ``flash_attn_varlen_func`` receives and computes each ``cu_seqlens`` segment with the dense reference."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def flash_attn_varlen_func(
        self,
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        **_,
    ):
        self.calls.append(dict(q=q, k=k, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                               max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, causal=causal))
        out = torch.empty_like(q)
        bounds = cu_seqlens_q.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            qd, kd, vd = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out[start:end] = attention_math(qd, kd, vd, causal=causal, softmax_scale=softmax_scale)[
                0
            ].transpose(0, 1)
        return out


def test_flash_attn_varlen_path_passes_token_major_tensors_and_cu_seqlens(monkeypatch):
    import sys

    stand_in = FlashAttnStandInForTests()
    monkeypatch.setitem(sys.modules, "flash_attn", stand_in)
    psp = document_packed_seq_params(_position_ids())
    q, k, v = (t.detach() for t in _qkv(torch.float32))
    out = document_attention(
        q, k, v, psp.cu_seqlens_q, psp.max_seqlen_q, softmax_scale=0.3, impl="flash_attn_varlen"
    )
    call = stand_in.calls[-1]
    assert call["q"].shape == (3 * S, HQ, D) and call["k"].shape == (3 * S, G, D) and call["causal"] is True
    assert (
        call["cu_seqlens_q"].dtype == torch.int32
        and call["cu_seqlens_q"].tolist() == psp.cu_seqlens_q.tolist()
    )
    assert call["max_seqlen_q"] == call["max_seqlen_k"] == 17
    assert rel_err(out, _per_document_reference(q.double(), k.double(), v.double(), 0.3)) <= 1e-5
