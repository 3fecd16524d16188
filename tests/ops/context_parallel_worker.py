"""torchrun worker (4 processes, gloo) for tests/ops/test_context_parallel.py.

Every case draws the whole sequence's q, k, v on every rank (same seed), takes this rank's chunk
pair with megatron-core's own ``get_batch_on_this_cp_rank``, runs ring, Ulysses or hybrid attention
over a CP group and compares the output and dQ/dK/dV with the dense reference (``attention_math`` in
float64 on the whole sequence, autograd for the gradients). Prints ``CASE <name> ok <max error>``.
Dropout cases give the reference the mask rebuilt explicitly for every (query, key) pair of the whole
sequence (``dropout_multiplier`` on global positions) and also compare with CP 1's blockwise kernel.
Document (packed-sample) cases compare with torch's own SDPA run causally on each document alone
(float64), the documents given to the code under test as ids / cu_seqlens of the whole sequence; with
dropout, with ``attention_math`` on each document given the whole batch's rebuilt mask cut to it, which
CP 1's packed path (per-document and masked blockwise kernels) must also match.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import mindspeed_llm  # noqa: F401  (device layer: gloo on the CPU)
from mindspeed_llm.ops.attention_kernels import (
    attention_dropout_rng,
    attention_math,
    blockwise_attention,
    dropout_multiplier,
)
from mindspeed_llm.ops.context_parallel_kernels import hybrid_attention, ring_attention, ulysses_attention
from tests.ops.fake_torch_npu import FakeTorchNpuForTests


def _local(t: torch.Tensor, group) -> torch.Tensor:
    """This rank's chunk pair of ``[b, n, S, d]`` as megatron-core's batch splitter cuts it (seq dim 1)."""
    from megatron.core.utils import get_batch_on_this_cp_rank

    return get_batch_on_this_cp_rank({"x": t.transpose(1, 2)}, cp_group=group)["x"].transpose(1, 2)


def run_case(name: str, algo: str, group, *, n_q: int, n_kv: int, dtype, kernel: str = "auto", tol: float,
             torch_npu=None, dropout_p: float = 0.0) -> None:
    """One comparison on ``group``; raises AssertionError with the case name on a mismatch."""
    if algo == "hybrid":  # group: (CP group, Ulysses sub-group, ring sub-group)
        group, *sub_groups = group
    torch.manual_seed(1234)
    b, s, d = 2, 64, 16
    seed = 4321
    q, k, v = (torch.randn(b, n, s, d, dtype=torch.float64) for n in (n_q, n_kv, n_kv))
    w = torch.randn(b, n_q, s, d, dtype=torch.float64)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    keep = None
    if dropout_p:  # the mask of every (query, key) pair of the whole sequence, rebuilt explicitly
        pos = torch.arange(s)
        keep = dropout_multiplier(seed, b, torch.arange(n_q), pos, pos, dropout_p, torch.float64)
    ref = attention_math(*ref_in, causal=True, softmax_scale=0.3, dropout_keep=keep)
    (ref * w).sum().backward()
    if dropout_p:
        plain = attention_math(q, k, v, causal=True, softmax_scale=0.3)
        assert float((ref - plain).abs().max()) > 0.1, f"{name}: the dropout mask changed nothing"
        cp1 = blockwise_attention(q.float(), k.float(), v.float(), causal=True, softmax_scale=0.3,
                                  dropout_p=dropout_p, seed=seed, block_q=16, block_k=16)
        err = float((cp1.double() - ref).abs().max() / ref.abs().max())
        assert err <= tol, f"{name}: CP 1 blockwise differs from the reference by {err:.3g}"
    local = [_local(t, group).to(dtype).requires_grad_() for t in (q, k, v)]
    if algo == "ring":
        out = ring_attention(*local, group, softmax_scale=0.3, kernel=kernel, torch_npu=torch_npu,
                             dropout_p=dropout_p, seed=seed)
    elif algo == "ulysses":  # ulysses and hybrid take megatron's [s, b, n, d]
        sbnd = [t.permute(2, 0, 1, 3) for t in local]
        out = ulysses_attention(*sbnd, group, softmax_scale=0.3, dropout_p=dropout_p, seed=seed).permute(1, 2, 0, 3)
    else:
        sbnd = [t.permute(2, 0, 1, 3) for t in local]
        out = hybrid_attention(*sbnd, *sub_groups, softmax_scale=0.3, kernel=kernel, dropout_p=dropout_p,
                               seed=seed).permute(1, 2, 0, 3)
    (out.double() * _local(w, group)).sum().backward()
    pairs = [(out, ref)] + [(t.grad, r.grad) for t, r in zip(local, ref_in)]
    worst = 0.0
    for label, (got, want) in zip(("out", "dq", "dk", "dv"), pairs):
        want = _local(want, group)
        err = float((got.detach().double() - want).abs().max() / want.abs().max())
        worst = max(worst, err)
        assert err <= tol, f"{name}: {label} differs by {err:.3g} (relative to max) > {tol}"
    if dist.get_rank() == 0:
        print(f"CASE {name} ok {worst:.3g}", flush=True)
    if torch_npu is not None:  # the ring fed the op its merged statistics: max = LSE, sum = 1
        grad = torch_npu.last("npu_fusion_attention_grad")
        assert grad["input_layout"] == "BNSD" and grad["softmax_sum"].eq(1).all()
        assert grad["softmax_max"].shape == (*grad["query"].shape[:3], 8)


# Per-sample document lengths of the 64-token document cases (CP 2: chunks of 16; CP 4: chunks of 8):
# several documents per chunk, documents of 1 and 2 tokens, documents crossing chunks and ranks (sample 1's
# first crosses CP 2's ranks 0 -> 1), boundaries exactly at chunk boundaries (16, 32, 48), so that at CP 2
# rank 0's step-1 blocks share no document (skipped) and rank 1's step-1 block has rows without a visible key.
DOCUMENTS = [[5, 11, 3, 20, 9, 16], [30, 2, 1, 15, 10, 6]]


def per_document_reference(q, k, v, documents, scale: float):
    """torch's SDPA (causal, GQA) on each document alone, written back in place: ``[b, n, s, d]``."""
    out = torch.zeros_like(q)
    for bi, lengths in enumerate(documents):
        start = 0
        for n in lengths:
            sl = slice(start, start + n)
            out[bi:bi + 1, :, sl] = torch.nn.functional.scaled_dot_product_attention(
                q[bi:bi + 1, :, sl], k[bi:bi + 1, :, sl], v[bi:bi + 1, :, sl], is_causal=True, scale=scale,
                enable_gqa=True)
            start += n
    return out


def per_document_dropout_reference(q, k, v, documents, scale: float, seed: int, p: float):
    """``attention_math`` causal on each document alone with the mask ``dropout_multiplier`` gives the whole
    batch's (batch row, head, position in the sample) keys, cut to the document: ``[b, n, s, d]``."""
    b, n_q, s = q.shape[:3]
    pos = torch.arange(s)
    keep = dropout_multiplier(seed, b, torch.arange(n_q), pos, pos, p, torch.float64) != 0
    out = torch.zeros_like(q)
    for bi, lengths in enumerate(documents):
        start = 0
        for n in lengths:
            sl = slice(start, start + n)
            out[bi:bi + 1, :, sl] = attention_math(q[bi:bi + 1, :, sl], k[bi:bi + 1, :, sl], v[bi:bi + 1, :, sl],
                                                   causal=True, softmax_scale=scale,
                                                   dropout_keep=keep[bi:bi + 1, :, sl, sl], dropout_p=p)
            start += n
    return out


def _check_cp1_packed_dropout(name: str, q, k, v, documents, cu_seqlens, ref, seed: int, p: float) -> None:
    """CP 1's packed path (per-document blockwise; the masked blockwise kernel too) drops the reference's mask."""
    from mindspeed_llm.ops.document_attention import document_attention

    sbnd = [t.float().permute(2, 0, 1, 3) for t in (q, k, v)]
    plain = per_document_reference(q, k, v, documents, 0.3)
    assert float((ref - plain).abs().max()) > 0.1, f"{name}: the dropout mask changed nothing"
    for impl in ("per_document", "blockwise_mask"):
        got = document_attention(*sbnd, cu_seqlens, softmax_scale=0.3, dropout_p=p, seed=seed, impl=impl)
        err = float((got.permute(1, 2, 0, 3).double() - ref).abs().max() / ref.abs().max())
        assert err <= 1e-5, f"{name}: CP 1 {impl} with dropout differs from the reference by {err:.3g}"


def run_document_case(name: str, algo: str, group, *, n_q: int, n_kv: int, documents=DOCUMENTS,
                      tol: float = 1e-5, dropout_p: float = 0.0) -> None:
    """Packed samples: ring / Ulysses / hybrid with the documents of the whole sequence vs per-document SDPA
    (with dropout: per-document ``attention_math`` with the rebuilt mask; CP 1's packed path checked too)."""
    from mindspeed_llm.ops.document_attention import ulysses_document_attention
    from mindspeed_llm.ops.packing import document_ids, document_packed_seq_params

    if algo == "hybrid":
        group, *sub_groups = group
    torch.manual_seed(99)
    b, s, d = len(documents), sum(documents[0]), 16
    seed = 2468
    q, k, v = (torch.randn(b, n, s, d, dtype=torch.float64) for n in (n_q, n_kv, n_kv))
    w = torch.randn(b, n_q, s, d, dtype=torch.float64)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    if dropout_p:
        ref = per_document_dropout_reference(*ref_in, documents, 0.3, seed, dropout_p)
    else:
        ref = per_document_reference(*ref_in, documents, 0.3)
    (ref * w).sum().backward()
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in documents])
    packed = document_packed_seq_params(position_ids)  # the whole sequence's documents (before the CP split)
    ids = document_ids(packed.cu_seqlens_q, b, s)
    if dropout_p:
        _check_cp1_packed_dropout(name, q, k, v, documents, packed.cu_seqlens_q, ref.detach(), seed, dropout_p)
    local = [_local(t, group).float().requires_grad_() for t in (q, k, v)]
    drop = dict(dropout_p=dropout_p, seed=seed)
    if algo == "ring":
        out = ring_attention(*local, group, softmax_scale=0.3, document_ids=ids, **drop)
    elif algo == "ulysses":
        sbnd = [t.permute(2, 0, 1, 3) for t in local]
        out = ulysses_document_attention(*sbnd, group, packed.cu_seqlens_q, packed.max_seqlen_q,
                                         softmax_scale=0.3, **drop).permute(1, 2, 0, 3)
    else:
        sbnd = [t.permute(2, 0, 1, 3) for t in local]
        out = hybrid_attention(*sbnd, *sub_groups, softmax_scale=0.3, document_ids=ids, **drop).permute(1, 2, 0, 3)
    (out.double() * _local(w, group)).sum().backward()
    worst = 0.0
    for label, got, want in zip(("out", "dq", "dk", "dv"), [out, *(t.grad for t in local)],
                                [ref, *(t.grad for t in ref_in)]):
        want = _local(want.detach(), group)
        got = got.detach().double()
        assert torch.isfinite(got).all(), f"{name}: {label} has non-finite values"
        err = float((got - want).abs().max() / want.abs().max())
        worst = max(worst, err)
        assert err <= tol, f"{name}: {label} differs by {err:.3g} (relative to max) > {tol}"
    if dist.get_rank() == 0:
        print(f"CASE {name} ok {worst:.3g}", flush=True)


def run_rng_case(name: str, group, *, n_q: int, n_kv: int, p: float = 0.3) -> None:
    """Ulysses with attention dropout under megatron's model-parallel RNG (the module's rule) equals CP 1's
    local kernel on the whole sequence with dropout forked from that same (TP rank 0) stream."""
    from types import SimpleNamespace

    from megatron.core import tensor_parallel

    def seed_tracker():
        tensor_parallel.model_parallel_cuda_manual_seed(77, tp_rank=0, ep_rank=0, etp_rank=0)

    torch.manual_seed(1234)
    b, s, d = 2, 64, 16
    q, k, v = (torch.randn(b, n, s, d) for n in (n_q, n_kv, n_kv))
    w = torch.randn(b, n_q, s, d)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    seed_tracker()
    with tensor_parallel.get_cuda_rng_tracker().fork():  # CP 1's local attention under TP rank 0's stream
        ref = blockwise_attention(*ref_in, causal=True, dropout_p=p, softmax_scale=0.3)
    (ref * w).sum().backward()
    seed_tracker()
    default_state = torch.get_rng_state()
    local = [_local(t, group).requires_grad_() for t in (q, k, v)]
    sbnd = [t.permute(2, 0, 1, 3) for t in local]
    with attention_dropout_rng(SimpleNamespace(sequence_parallel=False), p):
        out = ulysses_attention(*sbnd, group, softmax_scale=0.3, dropout_p=p).permute(1, 2, 0, 3)
    (out * _local(w, group)).sum().backward()
    assert torch.equal(torch.get_rng_state(), default_state), f"{name}: dropout drew from the default generator"
    clean = _local(attention_math(q.double(), k.double(), v.double(), causal=True, softmax_scale=0.3), group)
    assert (out.detach().double() - clean).abs().max() > 0.1, f"{name}: no dropout applied"
    worst = 0.0
    for label, got, want in zip(("out", "dq", "dk", "dv"), [out, *(t.grad for t in local)],
                                [ref, *(t.grad for t in ref_in)]):
        want = _local(want.detach(), group)
        err = float((got.detach() - want).abs().max() / want.abs().max())
        worst = max(worst, err)
        assert err <= 1e-5, f"{name}: {label} differs by {err:.3g} (relative to max) > 1e-5"
    if dist.get_rank() == 0:
        print(f"CASE {name} ok {worst:.3g}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == 4, "run with --nproc-per-node 4"
    world = dist.new_group([0, 1, 2, 3])
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    cp2 = pairs[rank // 2]
    # hybrid_cp_algo at CP 4 with U = 2 (MindSpeed's layout): Ulysses {0,1} {2,3}, ring {0,2} {1,3}.
    strided = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    hybrid = (world, cp2, strided[rank % 2])
    f32, bf16 = torch.float32, torch.bfloat16
    cases = [
        ("ring_cp2_mha", "ring", cp2, dict(n_q=4, n_kv=4, dtype=f32, tol=1e-5)),
        ("ring_cp4_gqa", "ring", world, dict(n_q=4, n_kv=2, dtype=f32, tol=1e-5)),
        ("ring_cp4_blockwise", "ring", world, dict(n_q=4, n_kv=1, dtype=f32, kernel="blockwise", tol=1e-5)),
        ("ring_cp2_bf16", "ring", cp2, dict(n_q=4, n_kv=2, dtype=bf16, tol=3e-2)),
        # No Ascend hardware here: the NPU ops come from the test stand-in (tests/ops/fake_torch_npu.py).
        ("ring_cp4_npu_stand_in", "ring", world, dict(n_q=4, n_kv=2, dtype=f32, kernel="npu", tol=1e-5,
                                                      torch_npu=FakeTorchNpuForTests())),
        ("ring_cp2_dropout", "ring", cp2, dict(n_q=4, n_kv=2, dtype=f32, tol=1e-5, dropout_p=0.3)),
        ("ring_cp4_dropout", "ring", world, dict(n_q=4, n_kv=1, dtype=f32, tol=1e-5, dropout_p=0.3)),
        ("ulysses_cp2_mha", "ulysses", cp2, dict(n_q=4, n_kv=4, dtype=f32, tol=1e-5)),
        ("ulysses_cp4_gqa", "ulysses", world, dict(n_q=8, n_kv=4, dtype=f32, tol=1e-5)),
        ("ulysses_cp4_kv_repeat", "ulysses", world, dict(n_q=4, n_kv=1, dtype=f32, tol=1e-5)),
        ("hybrid_cp4_u2_gqa", "hybrid", hybrid, dict(n_q=4, n_kv=2, dtype=f32, tol=1e-5)),
        ("hybrid_cp4_u2_kv_repeat_blockwise", "hybrid", hybrid, dict(n_q=4, n_kv=1, dtype=f32, kernel="blockwise",
                                                                     tol=1e-5)),
        ("ulysses_cp2_dropout", "ulysses", cp2, dict(n_q=4, n_kv=2, dtype=f32, tol=1e-5, dropout_p=0.3)),
        ("ulysses_cp4_dropout_kv_repeat", "ulysses", world, dict(n_q=4, n_kv=1, dtype=f32, tol=1e-5, dropout_p=0.3)),
        ("hybrid_cp4_u2_dropout", "hybrid", hybrid, dict(n_q=4, n_kv=2, dtype=f32, tol=1e-5, dropout_p=0.3)),
    ]
    document_cases = [
        ("ring_cp2_documents_gqa", "ring", cp2, dict(n_q=4, n_kv=2)),
        ("ring_cp4_documents_mqa", "ring", world, dict(n_q=4, n_kv=1)),
        ("ring_cp2_one_document_per_sample", "ring", cp2, dict(n_q=4, n_kv=2, documents=[[64], [64]])),
        ("ulysses_cp2_documents_gqa", "ulysses", cp2, dict(n_q=4, n_kv=2)),
        ("ulysses_cp4_documents_kv_repeat", "ulysses", world, dict(n_q=4, n_kv=1)),
        ("hybrid_cp4_u2_documents_gqa", "hybrid", hybrid, dict(n_q=4, n_kv=2)),
        ("ring_cp2_documents_dropout", "ring", cp2, dict(n_q=4, n_kv=2, dropout_p=0.3)),
        ("ring_cp4_documents_dropout_mqa", "ring", world, dict(n_q=4, n_kv=1, dropout_p=0.3)),
        ("ulysses_cp2_documents_dropout", "ulysses", cp2, dict(n_q=4, n_kv=2, dropout_p=0.3)),
        ("ulysses_cp4_documents_dropout_kv_repeat", "ulysses", world, dict(n_q=4, n_kv=1, dropout_p=0.3)),
        ("hybrid_cp4_u2_documents_dropout", "hybrid", hybrid, dict(n_q=4, n_kv=2, dropout_p=0.3)),
    ]
    only = set(sys.argv[1:])
    for name, algo, group, kw in cases:
        if not only or name in only:
            run_case(name, algo, group, **kw)
    for name, algo, group, kw in document_cases:
        if not only or name in only:
            run_document_case(name, algo, group, **kw)
    if not only or "ulysses_cp2_dropout_rng" in only:
        run_rng_case("ulysses_cp2_dropout_rng", cp2, n_q=4, n_kv=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
