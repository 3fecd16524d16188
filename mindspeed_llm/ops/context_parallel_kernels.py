"""Context-parallel kernels: causal self-attention over a sequence split across the ranks of a CP group.

The megatron-core module that runs them is
:class:`~mindspeed_llm.ops.context_parallel.ContextParallelAttention`; hybrid's sub-groups are created by
:func:`mindspeed_llm.runtime.parallel.initialize_hybrid_cp_groups` (this module creates no process group).

Layout (megatron-core's ``get_batch_on_this_cp_rank``, which also slices RoPE): the sequence is cut
into ``2 * CP`` equal chunks and CP rank ``r`` holds chunks ``r`` and ``2 * CP - 1 - r``, in that
order, so every rank does the same causal work. All algorithms take and return this layout.

- ``megatron_cp_algo`` (:func:`ring_attention`): K/V blocks travel around the CP ring
  (``isend``/``irecv``, the next block in flight while the current one is computed); each step
  runs a local kernel that returns the row log-sum-exp and the partial outputs are merged with an
  online softmax. With the chunk pairs, step ``i`` (K/V of rank ``src = r - i``) is: ``i = 0``
  causal over the local pair; ``src < r`` all local queries against the first K/V chunk;
  ``src > r`` the second local query chunk against both K/V chunks (everything else is masked).
  Backward recomputes each block with the final output and log-sum-exp (flash-attention's rule);
  dQ stays local, dK/dV travel with their K/V block and arrive home after CP hops. Memory: K/V and
  dK/dV travel as separate tensors at their GQA head count and in K/V's dtype; past step 0 every
  kernel call is one chunk against one chunk; per rank one K/V block is in hand and one in flight,
  and one dK/dV block accumulates (docs/performance_journal.md#context-parallelism).
- ``ulysses_cp_algo`` (:func:`ulysses_attention`): an all-to-all turns the sequence split into a
  head split (each rank: the whole sequence, ``1/CP`` of the heads), the chunks are put back in
  sequence order, the project's :func:`~mindspeed_llm.ops.attention_kernels.flash_attention` runs causal,
  and the inverse all-to-all restores the sequence split. Query heads must divide by CP; with GQA,
  K/V heads not divisible by CP are repeated by the smallest factor of the group size that makes
  them divisible (at worst to one K/V head per query head). Attention dropout is the local kernel's;
  the blockwise kernel (CPU) hashes the rank's global head index into its position-keyed mask.
- ``hybrid_cp_algo`` (:func:`hybrid_attention`, ``--ulysses-degree-in-cp U``): the CP group splits
  into ``CP / U`` Ulysses sub-groups of ``U`` consecutive CP ranks and ``U`` ring sub-groups of
  every ``U``-th rank. Ulysses' all-to-all inside a sub-group gathers ``U`` chunk pairs that are,
  put in order, the ring's load-balanced pair of a ``2 * CP / U`` split; ring attention then runs
  over the ring sub-group on ``1/U`` of the heads (dropout: the ring's, with the global head index),
  and the inverse all-to-all comes back.

Packed samples (``--reset-attention-mask``): the documents of the *whole* sequence are known on every CP
rank (read before the CP split). The ring cuts each block into the documents its rows and columns share
and runs the local kernel once per piece (blocks inside one document run whole, blocks sharing none are
skipped); Ulysses runs a given local attention (document attention:
:func:`~mindspeed_llm.ops.document_attention.ulysses_document_attention`) over the whole sequence after its
all-to-all; hybrid hands the documents to its ring. The documents come as plain tensors (per-token
document ids, or the local attention that knows them): this module imports neither
:mod:`~mindspeed_llm.ops.packing` nor :mod:`~mindspeed_llm.ops.document_attention`, which build on it.
Attention dropout keys each piece's
mask by its sample's batch row, global head and global positions (the blockwise kernel's hash), as CP 1's
per-document kernel does with the same seed: any CP size drops the same scores.

Local kernels with log-sum-exp (``[b, n, s, d]``, fp32 LSE ``[b, n, s]``): on CPU torch's flash
kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward); elsewhere (CUDA,
or ``kernel='blockwise'``) the project's pure-torch blockwise kernel (``kernel='cuda_efficient'``,
torch's memory-efficient CUDA kernel with its log-sum-exp, is opt-in until a GPU has run
bench/device_check.py's comparison); on NPU
``torch_npu.npu_fusion_attention`` / ``npu_fusion_attention_grad`` with ``softmax_max`` /
``softmax_sum`` (an LSE is passed as max = LSE, sum = 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mindspeed_llm.ops.attention_kernels import (
    blockwise_attention,
    blockwise_attention_with_lse,
    blockwise_attention_with_lse_backward,
    dropout_seed,
    flash_attention,
    resolve_softmax_scale,
    select_attention_impl,
)
from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.npu import require_torch_npu

CP_ALGOS = ("megatron_cp_algo", "ulysses_cp_algo", "hybrid_cp_algo")
# megatron-core's TransformerConfig.cp_comm_type spelling of each algorithm ('a2a+p2p': its hierarchical CP).
CP_COMM_TYPES = {"megatron_cp_algo": "p2p", "ulysses_cp_algo": "a2a", "hybrid_cp_algo": "a2a+p2p"}
RING_KERNELS = ("auto", "cpu_flash", "blockwise", "npu", "cuda_efficient")
# torch's memory-efficient CUDA kernel pads its log-sum-exp rows to a multiple of this (its backward takes them so).
_EFFICIENT_LSE_ALIGN = 32
_NPU_STAT_WIDTH = 8  # npu_fusion_attention's softmax_max / softmax_sum carry each row's value 8 times


# ----------------------------------------------------------------------------------------------
# Local kernels returning the log-sum-exp
# ----------------------------------------------------------------------------------------------


def select_ring_kernel(q: Tensor, kernel: str = "auto", backend: str | None = None, dropout_p: float = 0.0) -> str:
    """The local kernel the ring runs: NPU -> 'npu', CPU -> 'cpu_flash', else (CUDA) 'blockwise'.

    With dropout every device runs 'blockwise': its mask is keyed by global positions, so the
    backward's recompute and any other split of the sequence draw the same mask.
    """
    if kernel not in RING_KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {RING_KERNELS}")
    if kernel == "auto" and dropout_p > 0.0:
        return "blockwise"
    if kernel != "auto":
        return kernel
    device = resolve_backend(q, backend)
    if device == "npu":
        return "npu"
    return "cpu_flash" if q.device.type == "cpu" else "blockwise"


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, kernel: str,
                       torch_npu: Any = None, dropout: tuple | None = None) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of softmax attention on ``[b, n, s, d]`` (GQA allowed); lse fp32 ``[b, n_q, s_q]``.

    ``dropout``: ``(p, seed, (q positions, k positions, first head))`` for the blockwise kernel's
    position-keyed mask (:func:`~mindspeed_llm.ops.attention_kernels.dropout_multiplier`); lse is then the
    undropped rows' log-sum-exp, so blocks merge as without dropout.
    """
    if dropout is not None and kernel != "blockwise":
        raise ValueError(f"attention dropout in the ring runs the blockwise kernel, not kernel={kernel!r}")
    if kernel == "cpu_flash":
        # torch's CPU flash kernel takes fewer K/V heads than query heads (GQA) as they are.
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse.float()
    if kernel == "blockwise":
        out, lse = blockwise_attention_with_lse(q, k, v, causal=causal, scale=scale, dropout=dropout)
        return out, lse.float()
    if kernel == "npu":
        npu = require_torch_npu(torch_npu, "ring attention")
        out, smax, ssum = _npu_forward(npu, q, k, v, causal, scale)
        return out, (smax[..., 0] + ssum[..., 0].log()).float()
    if kernel == "cuda_efficient":  # not the default: no GPU has run it yet (bench/device_check.py compares it)
        ke, ve = _expand_kv(q, k, v)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, ke, ve, None, True, 0.0, causal,
                                                                          scale=scale)[:2]
        return out, lse[..., :q.shape[2]]
    raise ValueError(f"kernel={kernel!r}: expected one of {RING_KERNELS[1:]}")


def attention_with_lse_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *,
                                causal: bool, scale: float, kernel: str, torch_npu: Any = None,
                                dropout: tuple | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of one block given the *final* ``out`` and ``lse`` of the query rows (flash backward)."""
    if dropout is not None and kernel != "blockwise":
        raise ValueError(f"attention dropout in the ring runs the blockwise kernel, not kernel={kernel!r}")
    if kernel == "cpu_flash":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, scale=scale)
        return dq, dk, dv
    if kernel == "blockwise":
        return blockwise_attention_with_lse_backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                                     dropout=dropout)
    if kernel == "npu":
        npu = require_torch_npu(torch_npu, "ring attention")
        return _npu_backward(npu, dout, q, k, v, out, lse, causal, scale)
    if kernel == "cuda_efficient":
        return _efficient_backward(dout, q, k, v, out, lse, causal, scale)
    raise ValueError(f"kernel={kernel!r}: expected one of {RING_KERNELS[1:]}")


def _expand_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """K/V repeated to the query heads (torch's CUDA kernels want as many K/V heads as query heads)."""
    rep = q.shape[1] // k.shape[1]
    return (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))


def _efficient_backward(dout, q, k, v, out, lse, causal: bool, scale: float):
    """torch's memory-efficient CUDA backward of one block with the merged ``out`` / ``lse``; GQA summed back."""
    ke, ve = _expand_kv(q, k, v)
    pad = -q.shape[2] % _EFFICIENT_LSE_ALIGN
    lse = torch.nn.functional.pad(lse, (0, pad)) if pad else lse.contiguous()
    unused = torch.zeros((), dtype=torch.int64, device=q.device)  # philox seed / offset: no dropout here
    dq, dk, dv = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        dout, q, ke, ve, None, out, lse, unused, unused, 0.0, [True, True, True, False], causal, scale=scale)[:3]
    b, g = k.shape[:2]
    if ke is not k:
        dk, dv = (t.view(b, g, -1, *t.shape[2:]).sum(2) for t in (dk, dv))
    return dq, dk, dv


def _npu_causal_args(q: Tensor, causal: bool) -> dict:
    if not causal:
        return {"atten_mask": None, "sparse_mode": 0}
    size = 2048  # torch_npu's compressed causal mask (sparse_mode=2, left-up causal)
    return {"atten_mask": torch.triu(torch.ones(size, size, dtype=torch.bool, device=q.device), 1), "sparse_mode": 2}


def _npu_forward(npu: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float):
    out, smax, ssum = npu.npu_fusion_attention(q, k, v, q.shape[1], "BNSD", scale=scale, keep_prob=1.0,
                                               **_npu_causal_args(q, causal))[:3]
    return out, smax, ssum


def _npu_backward(npu: Any, dout, q, k, v, out, lse, causal: bool, scale: float):
    # p = exp(s - max) / sum: max = LSE and sum = 1 give the merged softmax of the whole ring.
    smax = lse.unsqueeze(-1).expand(*lse.shape, _NPU_STAT_WIDTH).contiguous()
    ssum = torch.ones_like(smax)
    dq, dk, dv = npu.npu_fusion_attention_grad(
        q, k, v, dout, q.shape[1], "BNSD", softmax_max=smax, softmax_sum=ssum, attention_in=out,
        scale_value=scale, keep_prob=1.0, **_npu_causal_args(q, causal))[:3]
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Ring attention (megatron_cp_algo)
# ----------------------------------------------------------------------------------------------


def _peers(group) -> tuple[int, int]:
    """Global ranks of the next and the previous CP rank on the ring."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    return dist.get_global_rank(group, (rank + 1) % size), dist.get_global_rank(group, (rank - 1) % size)


def _dense_view(t: Tensor) -> Tensor:
    """A contiguous view of a tensor whose strides are a permutation of a contiguous one (gloo sends those only)."""
    if t.is_contiguous():
        return t
    view = t.permute(sorted(range(t.dim()), key=lambda i: -t.stride(i)))
    if not view.is_contiguous():
        raise ValueError(f"ring attention: cannot send a tensor of strides {t.stride()} without a copy")
    return view


def _send_next(tensors: list[Tensor], group, tag: int) -> list:
    """Start sending ``tensors`` to the next CP rank (tags ``tag, tag + 1, ...``); the requests."""
    nxt = _peers(group)[0]
    return [dist.isend(_dense_view(t), nxt, group=group, tag=tag + i) for i, t in enumerate(tensors)]


def _recv_prev(like: list, group, tag: int) -> tuple[list, list[Tensor]]:
    """Start receiving tensors laid out like ``like`` (tensors or ``(tensor, strides)``) from the previous CP rank."""
    prv = _peers(group)[1]
    bufs = [torch.empty_like(t) if isinstance(t, Tensor) else torch.empty_strided(t[0].shape, t[1], dtype=t[0].dtype,
                                                                                     device=t[0].device)
            for t in like]
    return [dist.irecv(_dense_view(b), prv, group=group, tag=tag + i) for i, b in enumerate(bufs)], bufs


def _ring_shift(tensors: list[Tensor], group, tag: int) -> tuple[list, list[Tensor]]:
    """Start sending ``tensors`` to the next CP rank and receiving the previous one's; (requests, buffers)."""
    # Receives are posted before sends on every rank: no rank blocks on a send nobody receives yet.
    reqs, bufs = _recv_prev(tensors, group, tag)
    return reqs + _send_next(tensors, group, tag), bufs


def _wait(reqs: list) -> None:
    """Wait for the requests and drop them: a finished request still holds its tensor."""
    for req in reqs:
        req.wait()
    reqs.clear()


def _merge(out: Tensor, lse: Tensor, block_out: Tensor, block_lse: Tensor) -> None:
    """Online softmax: fold one block's ``(out, lse)`` into the running fp32 ``out`` / ``lse`` in place."""
    new = torch.logaddexp(lse, block_lse)
    out.mul_(torch.exp(lse - new).unsqueeze(-1))
    block_out = block_out.float() if block_out.dtype != torch.float32 else block_out
    out.add_(block_out.mul_(torch.exp(block_lse - new).unsqueeze(-1)))  # the block's output is not needed after
    lse.copy_(new)


def _blocks(step: int, src: int, rank: int, half: int) -> list[tuple[slice, slice, bool]]:
    """(query rows, K/V columns, causal) of the kernel calls of ring step ``step`` (K/V of CP rank ``src``).

    Past step 0 every call is one chunk against one chunk: the kernels' outputs and gradients are
    then a quarter of the pair's, instead of half.
    """
    first, second = slice(0, half), slice(half, None)
    if step == 0:  # the local pair, causal
        return [(slice(None), slice(None), True)]
    if src < rank:  # both local query chunks against the first K/V chunk of an earlier rank
        return [(first, first, False), (second, first, False)]
    return [(second, first, False), (second, second, False)]  # the second local chunk against a later pair


def _pair_positions(rank: int, size: int, half: int, device) -> Tensor:
    """Sequence positions of CP rank ``rank``'s chunk pair (chunks ``rank`` and ``2 * size - 1 - rank``)."""
    first = torch.arange(rank * half, (rank + 1) * half, device=device)
    return torch.cat([first, first + (2 * size - 1 - 2 * rank) * half])


def _runs(ids: Tensor) -> list[tuple[int, int, int]]:
    """(value, start, end) of the runs of equal values of a 1-d tensor."""
    starts = [0, *((ids[1:] != ids[:-1]).nonzero().flatten() + 1).tolist()]
    values = ids[starts].tolist()
    return list(zip(values, starts, [*starts[1:], ids.numel()]))


def _document_pieces(q_doc: Tensor, k_doc: Tensor) -> list[tuple[int, slice, slice]] | None:
    """(sample, query rows, key columns) of each document a ring block's rows and columns share.

    ``q_doc`` / ``k_doc``: ``[b, s_q]`` / ``[b, s_k]`` document ids of the block's rows and columns, in
    sequence order (ids never decrease along a sample, so each document is one run of rows and one of
    columns). None when every sample's rows and columns lie in one document (the block needs no pieces).
    """
    first = q_doc[:, 0]
    if all(torch.equal(first, t) for t in (q_doc[:, -1], k_doc[:, 0], k_doc[:, -1])):
        return None
    pieces = []
    for b in range(q_doc.shape[0]):
        cols = {doc: slice(c0, c1) for doc, c0, c1 in _runs(k_doc[b])}
        pieces += [(b, slice(r0, r1), cols[doc]) for doc, r0, r1 in _runs(q_doc[b]) if doc in cols]
    return pieces


def _ring_pieces(docs: Tensor | None, q_pos: Tensor, src: int, size: int, rows: slice,
                 cols: slice) -> list[tuple[int, slice, slice]] | None:
    """:func:`_document_pieces` of one ring block (``docs``: ``[b, S]`` ids of the whole sequence); None: no documents."""
    if docs is None:
        return None
    k_pos = _pair_positions(src, size, q_pos.numel() // 2, q_pos.device)
    return _document_pieces(docs[:, q_pos[rows]], docs[:, k_pos[cols]])


def _piece_dropout(drop: tuple | None, i: int, rows: slice, cols: slice) -> tuple | None:
    """A block's dropout argument narrowed to one document piece: its sample ``i``'s row, its rows and columns."""
    if drop is None:
        return None
    p, seed, (q_pos, k_pos, head0) = drop
    return p, seed, (q_pos[rows], k_pos[cols], head0, i)


def _pieces_forward(q: Tensor, k: Tensor, v: Tensor, pieces: list, dropout: tuple | None = None,
                    **kw) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of a block computed one document piece at a time; rows no piece covers: 0 and ``-inf``."""
    b, n, s_q = q.shape[:3]
    out = q.new_zeros(b, n, s_q, v.shape[-1])
    lse = torch.full((b, n, s_q), float("-inf"), dtype=torch.float32, device=q.device)
    for i, rows, cols in pieces:
        o, m = attention_with_lse(q[i:i + 1, :, rows], k[i:i + 1, :, cols], v[i:i + 1, :, cols],
                                  dropout=_piece_dropout(dropout, i, rows, cols), **kw)
        out[i:i + 1, :, rows] = o
        lse[i:i + 1, :, rows] = m
    return out, lse


def _pieces_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, pieces: list,
                     dropout: tuple | None = None, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of a block computed one document piece at a time (zero outside the pieces)."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for i, rows, cols in pieces:
        gq, gk, gv = attention_with_lse_backward(dout[i:i + 1, :, rows], q[i:i + 1, :, rows], k[i:i + 1, :, cols],
                                                 v[i:i + 1, :, cols], out[i:i + 1, :, rows], lse[i:i + 1, :, rows],
                                                 dropout=_piece_dropout(dropout, i, rows, cols), **kw)
        dq[i:i + 1, :, rows] += gq
        dk[i:i + 1, :, cols] += gk
        dv[i:i + 1, :, cols] += gv
    return dq, dk, dv


def _block_dropout(drop: tuple | None, src: int, rows: slice, cols: slice, q_pos: Tensor) -> tuple | None:
    """The blockwise kernel's dropout argument for one ring block (global positions of its rows and columns)."""
    if drop is None:
        return None
    p, seed, size, head0 = drop
    k_pos = _pair_positions(src, size, q_pos.numel() // 2, q_pos.device)
    return p, seed, (q_pos[rows], k_pos[cols], head0)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, group, kernel, torch_npu, drop, docs):
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        half = q.shape[2] // 2
        q_pos = _pair_positions(rank, size, half, q.device)
        out = lse = None
        kb, vb = k, v  # K/V travel as they are: their GQA head count, two buffers (no stacked copy)
        for step in range(size):
            reqs, nxt = _ring_shift([kb, vb], group, tag=0) if step < size - 1 else ([], None)
            src = (rank - step) % size
            for rows, cols, causal in _blocks(step, src, rank, half):
                kw = dict(causal=causal, scale=scale, kernel=kernel, torch_npu=torch_npu)
                pieces = _ring_pieces(docs, q_pos, src, size, rows, cols)
                dropout = _block_dropout(drop, src, rows, cols, q_pos)
                if pieces is None:
                    o, m = attention_with_lse(q[:, :, rows], kb[:, :, cols], vb[:, :, cols], dropout=dropout, **kw)
                elif pieces:
                    o, m = _pieces_forward(q[:, :, rows], kb[:, :, cols], vb[:, :, cols], pieces, dropout, **kw)
                else:  # no query of the block shares a document with its keys (never at step 0: each sees itself)
                    continue
                if step == 0:  # the running output starts as the local causal block's (fp32 accumulator)
                    out, lse = (o.float() if o.dtype != torch.float32 else o), m
                else:
                    _merge(out[:, :, rows], lse[:, :, rows], o, m)
                del o, m
            _wait(reqs)
            kb, vb = nxt or (None, None)  # the block just used is freed here (step > 0)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (scale, group, kernel, torch_npu, drop, docs)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        scale, group, kernel, torch_npu, drop, docs = ctx.args
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        half = q.shape[2] // 2
        q_pos = _pair_positions(rank, size, half, q.device)
        dout = dout.contiguous()
        dq = None
        kb, vb = k, v
        sending: list = []  # the dK/dV this rank accumulated last step, on their way to the next rank
        layout: list = []  # dK/dV buffers take the strides the kernel gave the local block's gradients
        for step in range(size):
            reqs, nxt = _ring_shift([kb, vb], group, tag=0) if step < size - 1 else ([], None)
            src = (rank - step) % size
            # Past step 0 the dK/dV accumulated so far for this block arrive first and the kernel's gradients
            # are added as each call returns (the exchange is small next to the block's compute).
            acc = _accumulated_dkv(layout, sending, group) if step > 0 else None
            for rows, cols, causal in _blocks(step, src, rank, half):
                kw = dict(causal=causal, scale=scale, kernel=kernel, torch_npu=torch_npu)
                block = (dout[:, :, rows], q[:, :, rows], kb[:, :, cols], vb[:, :, cols], out[:, :, rows],
                         lse[:, :, rows])
                pieces = _ring_pieces(docs, q_pos, src, size, rows, cols)
                dropout = _block_dropout(drop, src, rows, cols, q_pos)
                if pieces is None:
                    gq, gk, gv = attention_with_lse_backward(*block, dropout=dropout, **kw)
                elif pieces:
                    gq, gk, gv = _pieces_backward(*block, pieces, dropout, **kw)
                else:  # no query of the block shares a document with its keys: no gradient
                    continue
                if step == 0:  # dQ accumulates here (fp32); dK/dV travel in K/V's dtype and the kernel's layout
                    dq = gq.float() if gq.dtype != torch.float32 else gq
                    acc = [gk.to(k.dtype), gv.to(v.dtype)]
                    if docs is not None:  # step 0 may run pieces on one rank and not on another: one layout
                        acc = [t.contiguous() for t in acc]
                    layout = [(k, acc[0].stride()), (v, acc[1].stride())]  # the same on every CP rank
                else:
                    dq[:, :, rows] += gq
                    acc[0][:, :, cols] += gk
                    acc[1][:, :, cols] += gv
                del gq, gk, gv
            sending = _send_next(acc, group, tag=2)
            del acc
            _wait(reqs)
            kb, vb = nxt or (None, None)
        dk, dv = _accumulated_dkv(layout, sending, group)  # after CP hops each block's dK/dV is back home
        return dq.to(q.dtype), dk, dv, None, None, None, None, None, None


def _accumulated_dkv(layout: list, sending: list, group) -> list[Tensor]:
    """Receive the previous rank's dK/dV for the block in hand once this rank's last ones have left."""
    # The receive is posted before waiting on the send: the next rank's matching receive waits for the same.
    reqs, bufs = _recv_prev(layout, group, tag=2)
    _wait(sending)
    _wait(reqs)
    return bufs


def ring_attention(q: Tensor, k: Tensor, v: Tensor, group, *, softmax_scale: float | None = None,
                   kernel: str = "auto", backend: str | None = None, torch_npu: Any = None, dropout_p: float = 0.0,
                   seed: int | None = None, head_offset: int = 0, document_ids: Tensor | None = None) -> Tensor:
    """Causal attention of this CP rank's chunk pair ``[b, n, s_local, d]`` against the whole sequence.

    ``dropout_p``: attention dropout with the blockwise kernel's position-keyed mask; ``seed`` (the
    same on every CP rank) defaults to a draw from the device's default generator (megatron's RNG
    tracker fork when the caller holds it); ``head_offset`` is the global index of ``q``'s first head
    in the mask's hash. The mask of a (query, key) pair does not depend on the CP size: CP 1's
    :func:`~mindspeed_llm.ops.attention_kernels.blockwise_attention` with the same seed drops the same scores.

    ``document_ids`` (packed samples): ``[b, S]`` document numbers of the *whole* sequence (the same on
    every CP rank, non-decreasing along each sample; :func:`~mindspeed_llm.ops.packing.document_ids`):
    a query then sees only earlier keys of its own document. A block inside one document runs as without
    documents; a block whose rows share no document with its columns is skipped; otherwise the local
    kernel runs once per shared document on its rows and columns (causal at step 0, where rows and
    columns are the same tokens; else every key precedes every query), and rows no document piece
    covers add nothing to the merged softmax (output 0, log-sum-exp ``-inf``). With dropout each piece
    is keyed by its sample's batch row and its global positions: CP 1's
    :func:`~mindspeed_llm.ops.document_attention.per_document_attention` with the same seed drops the same.
    """
    if q.shape[2] % 2:
        raise ValueError(f"ring attention needs an even local sequence (two chunks), got {q.shape[2]}")
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    kernel = select_ring_kernel(q, kernel, backend, dropout_p)
    drop = None
    if dropout_p > 0.0:
        drop = (float(dropout_p), dropout_seed(dropout_p, seed, q.device), dist.get_world_size(group),
                int(head_offset))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if document_ids is not None:
        expect = (q.shape[0], q.shape[2] * dist.get_world_size(group))
        if tuple(document_ids.shape) != expect:
            raise ValueError(f"ring attention: document_ids must be [batch, whole sequence] = {expect}, got "
                             f"{tuple(document_ids.shape)}")
        document_ids = document_ids.to(device=q.device, dtype=torch.int64)
    return _RingAttention.apply(q, k, v, scale, group, kernel, torch_npu, drop, document_ids)


# ----------------------------------------------------------------------------------------------
# Ulysses (ulysses_cp_algo)
# ----------------------------------------------------------------------------------------------


def _seq_to_head(x: Tensor, group) -> Tensor:
    """``[s_local, b, n, d]`` -> ``[cp * s_local, b, n / cp, d]`` (rank-major sequence)."""
    cp = dist.get_world_size(group)
    s, b, n, d = x.shape
    send = x.view(s, b, cp, n // cp, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.view(cp * s, b, n // cp, d)


def _head_to_seq(x: Tensor, group) -> Tensor:
    """Inverse of :func:`_seq_to_head`: ``[cp * s_local, b, n / cp, d]`` -> ``[s_local, b, n, d]``."""
    cp = dist.get_world_size(group)
    s_all, b, n_part, d = x.shape
    send = x.contiguous().view(cp, s_all // cp, b, n_part, d)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(s_all // cp, b, cp * n_part, d)


class _SeqToHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_head(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _head_to_seq(grad, ctx.group), None


class _HeadToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _head_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_head(grad, ctx.group), None


def chunk_order(cp: int) -> tuple[Tensor, Tensor]:
    """(to_natural, to_ranks): index maps between the ranks' chunk pairs laid end to end and sequence order."""
    ranks = [c for r in range(cp) for c in (r, 2 * cp - 1 - r)]  # chunk held at each gathered position
    to_natural = torch.tensor([ranks.index(c) for c in range(2 * cp)])
    return to_natural, torch.tensor(ranks)


def _reorder_chunks(x: Tensor, index: Tensor) -> Tensor:
    n_chunks = index.numel()
    chunks = x.view(n_chunks, x.shape[0] // n_chunks, *x.shape[1:])
    return chunks.index_select(0, index.to(x.device)).view(x.shape)


def ulysses_kv_repeat(n_q: int, n_kv: int, cp: int) -> int:
    """How many times each K/V head is repeated so that CP divides the K/V heads (1 when it does)."""
    if n_q % cp:
        raise ValueError(f"ulysses_cp_algo needs the attention heads per TP rank ({n_q}) divisible by "
                         f"--context-parallel-size {cp}")
    group = n_q // n_kv
    return next(r for r in range(1, group + 1) if group % r == 0 and (n_kv * r) % cp == 0)


def _heads_to_ranks(q: Tensor, k: Tensor, v: Tensor, group) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Ulysses' all-to-all: ``[s_local, b, n, d]`` chunk pairs -> the whole sequence (in order) for ``1/size``
    of the heads (K/V repeated first where their heads do not divide); also the chunk order back and this
    rank's first global query head."""
    size = dist.get_world_size(group)
    rep = ulysses_kv_repeat(q.shape[2], k.shape[2], size)
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    to_natural, to_ranks = chunk_order(size)
    head_offset = dist.get_rank(group) * (q.shape[2] // size)
    q, k, v = (_reorder_chunks(_SeqToHead.apply(t, group), to_natural) for t in (q, k, v))
    return q, k, v, to_ranks, head_offset


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, group, *, softmax_scale: float | None = None,
                      dropout_p: float = 0.0, seed: int | None = None, impl: str = "auto",
                      backend: str | None = None,
                      local_attention: Callable[[Tensor, Tensor, Tensor, int], Tensor] | None = None,
                      ) -> Tensor:
    """Causal attention of this CP rank's chunk pair on ``[s_local, b, n, d]`` via all-to-all; same layout out.

    ``dropout_p``: the local kernel's attention dropout (each rank holds whole sequences for its
    heads). Where that kernel is the blockwise one (CPU), its mask is keyed by (seed, head, query
    and key position) with this rank's global head index, so any CP size drops what CP 1's
    :func:`~mindspeed_llm.ops.attention_kernels.blockwise_attention` drops with the same ``seed`` (default:
    a draw from the current generator, the same on every CP rank). Other kernels draw their own.

    ``local_attention(q, k, v, head_offset)`` replaces the causal kernel: it gets the whole sequences
    ``[S, b, n / CP, d]`` of this rank's heads (``head_offset``: the global index of the first) and returns
    them attended, same shape; ``softmax_scale``, ``dropout_p``, ``seed`` and ``impl`` are then its own.
    Packed samples run document attention there
    (:func:`~mindspeed_llm.ops.document_attention.ulysses_document_attention`).
    """
    q, k, v, to_ranks, head_offset = _heads_to_ranks(q, k, v, group)
    if local_attention is not None:
        return _HeadToSeq.apply(_reorder_chunks(local_attention(q, k, v, head_offset), to_ranks), group)
    if impl == "auto":
        impl = select_attention_impl(q, attn_mask=None, dropout_p=dropout_p, backend=backend)
    if dropout_p > 0.0 and impl == "blockwise":
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        out = blockwise_attention(q, k, v, causal=True, dropout_p=dropout_p, softmax_scale=softmax_scale,
                                  seed=dropout_seed(dropout_p, seed, q.device),
                                  head_offset=head_offset).permute(2, 0, 1, 3)
    else:
        out = flash_attention(q, k, v, causal=True, dropout_p=dropout_p, softmax_scale=softmax_scale, layout="sbnd",
                              impl=impl, backend=backend)
    return _HeadToSeq.apply(_reorder_chunks(out, to_ranks), group)


# ----------------------------------------------------------------------------------------------
# Hybrid (hybrid_cp_algo): Ulysses inside sub-groups of U ranks, ring across them
# ----------------------------------------------------------------------------------------------


def hybrid_cp_rank_groups(cp_ranks: list[int], ulysses_degree: int) -> tuple[list[list[int]], list[list[int]]]:
    """(Ulysses groups, ring groups) of one CP group: consecutive runs of U ranks, and every U-th rank.

    CP rank ``c`` is Ulysses rank ``c % U`` and ring rank ``c // U`` (MindSpeed's layout, and
    megatron-core's ``hierarchical_context_parallel_sizes=[U, CP / U]``).
    """
    cp = len(cp_ranks)
    if ulysses_degree < 1 or cp % ulysses_degree:
        raise ValueError(f"ulysses degree {ulysses_degree} must divide the CP size {cp}")
    ulysses = [cp_ranks[i:i + ulysses_degree] for i in range(0, cp, ulysses_degree)]
    ring = [cp_ranks[u::ulysses_degree] for u in range(ulysses_degree)]
    return ulysses, ring


def hybrid_attention(q: Tensor, k: Tensor, v: Tensor, ulysses_group, ring_group, *,
                     softmax_scale: float | None = None, kernel: str = "auto", backend: str | None = None,
                     torch_npu: Any = None, dropout_p: float = 0.0, seed: int | None = None,
                     document_ids: Tensor | None = None) -> Tensor:
    """Causal attention of this CP rank's chunk pair on ``[s_local, b, n, d]``: Ulysses, then ring; same layout out.

    With ``U`` Ulysses and ``R`` ring ranks, Ulysses sub-group ``m`` holds chunks ``mU .. mU+U-1``
    and ``2CP-1-mU-(U-1) .. 2CP-1-mU`` of the ``2CP``-chunk split: after the all-to-all and
    :func:`chunk_order` of ``U`` these are blocks ``m`` and ``2R-1-m`` of a ``2R``-block split, in
    order, which is the ring's own load-balanced layout for ring rank ``m``. Dropout is the ring's
    (position-keyed, with this Ulysses rank's global head index): the same mask as at CP 1.
    ``document_ids`` (packed samples, ``[b, S]`` of the whole sequence) go to the ring unchanged: its
    blocks' positions are those of the ``2R``-block split.
    """
    q, k, v, to_ranks, head_offset = _heads_to_ranks(q, k, v, ulysses_group)
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    out = ring_attention(q, k, v, ring_group, softmax_scale=softmax_scale, kernel=kernel, backend=backend,
                         torch_npu=torch_npu, dropout_p=dropout_p, seed=dropout_seed(dropout_p, seed, q.device),
                         head_offset=head_offset, document_ids=document_ids)
    return _HeadToSeq.apply(_reorder_chunks(out.permute(2, 0, 1, 3), to_ranks), ulysses_group)
