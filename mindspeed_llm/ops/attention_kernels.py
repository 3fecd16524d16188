"""Attention kernels: a flash-style torch kernel with native GQA and the per-device library kernels.

The megatron-core module that uses them is :class:`~mindspeed_llm.ops.attention.FlashDotProductAttention`;
packed documents (:mod:`~mindspeed_llm.ops.document_attention`) and context parallelism
(:mod:`~mindspeed_llm.ops.context_parallel_kernels`) are built on these kernels, which import neither.

Conventions (megatron's): a boolean ``attn_mask`` is True where attention is *masked out*, and is
broadcastable to ``[b, n_heads, s_q, s_k]``. ``causal`` means query ``i`` sees keys ``j <= i``
(``s_q == s_k``). Query rows with no visible key give zeros (megatron's local attention, which fills
masked scores with -10000, would average all values there instead; such rows carry no loss).

Implementations, all taking ``[b, n, s, d]`` tensors with ``n_q`` a multiple of ``n_kv``:

- :func:`blockwise_attention` - pure torch, flash-style: chunks over queries and keys with an online
  softmax, saves only ``q, k, v, out`` and the row log-sum-exp, recomputes scores in backward.
  GQA without repeating K/V (query heads of a group are folded into the rows of one matmul).
  Supports dropout: the mask is a hash of (seed, batch row, head, query position, key position)
  (:func:`dropout_multiplier`), regenerated in backward and independent of the block sizes and of
  how a sequence is split (ring attention gives each block its global positions). Runs anywhere.
  :func:`blockwise_attention_with_lse` and :func:`blockwise_attention_with_lse_backward` are its two
  halves for callers that merge blocks themselves (ring attention).
- :func:`sdpa_attention` - ``torch.nn.functional.scaled_dot_product_attention`` with ``enable_gqa``;
  on CPU this reaches torch's flash kernel when there is no dropout (measured: the fastest and
  most frugal choice, see docs/performance_journal.md), on CUDA the flash/memory-efficient kernels.
- :func:`flash_attn_cuda` - the ``flash-attn`` package when installed (CUDA, fp16/bf16, no mask).
- :func:`npu_fusion_attention` - ``torch_npu.npu_fusion_attention``.
- :func:`attention_math` - the textbook dense formula (materialises scores): the test reference.

:func:`flash_attention` picks one per device.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor

from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.npu import require_torch_npu

LAYOUTS = ("bnsd", "sbnd")
# torch_npu's compressed causal mask for sparse_mode=2/3 is always 2048 x 2048 (True = masked).
NPU_CAUSAL_MASK_SIZE = 2048
# Dropout hash: murmur3's 64-bit finaliser constants and the golden-ratio step, as wrapping int64.
_FMIX1, _FMIX2, _GOLDEN = (c - 2**64 for c in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x9E3779B97F4A7C15))
_FMIX32_1, _FMIX32_2 = (c - 2**32 for c in (0x85EBCA6B, 0xC2B2AE35))
_LOW31 = 2**31 - 1


def dropout_seed(dropout_p: float, seed: int | None, device) -> int | None:
    """The dropout hash's seed: given, or one draw from the device's current generator (megatron's RNG
    tracker fork when the caller holds it: the same on every CP rank of a TP rank); None without dropout."""
    if dropout_p <= 0.0 or seed is not None:
        return seed
    return int(torch.randint(0, 2**62, (1,), device=device).item())


def resolve_softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
    """``softmax_scale`` as a float, or the default ``1 / sqrt(head_dim)`` when None."""
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-d [b, n, s, d] tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0 or k.shape[1] != v.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]}, {v.shape[1]})")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs s_q == s_k, got {q.shape[2]} and {k.shape[2]}")


def attention_math(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    attn_mask: Tensor | None = None,
    softmax_scale: float | None = None,
    dropout_keep: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Dense reference ``softmax(q k^T * scale, masked) v`` on ``[b, n, s, d]``; materialises the scores.

    ``dropout_keep`` (bool, broadcastable to the scores) applies a given dropout mask scaled by
    ``1 / (1 - dropout_p)``; used by tests to check the kernels' dropout exactly.
    """
    _check_shapes(query, key, value, causal)
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    scores = (query @ key.transpose(-1, -2)) * resolve_softmax_scale(softmax_scale, query.shape[-1])
    masked = torch.zeros(scores.shape[-2:], dtype=torch.bool, device=scores.device)
    if causal:
        masked = torch.triu(torch.ones_like(masked), diagonal=1)
    if attn_mask is not None:
        masked = masked | attn_mask
    scores = scores.masked_fill(masked, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros
    if dropout_keep is not None:
        probs = probs * dropout_keep / (1.0 - dropout_p)
    return probs @ value


# ----------------------------------------------------------------------------------------------
# Pure-torch blockwise (flash-style) kernel
# ----------------------------------------------------------------------------------------------


def _block_mask(mask5: Tensor | None, i0: int, i1: int, j0: int, j1: int, causal: bool, device) -> Tensor | None | bool:
    """The masked-out entries of one (query block, key block): None = nothing masked, True = all."""
    block = None
    if mask5 is not None:
        block = mask5[..., i0:i1, j0:j1]
        if bool(block.all()):
            return True
        if not bool(block.any()):
            block = None
    if causal and j1 - 1 > i0:  # some key in this block lies after some query
        if j0 > i1 - 1:
            return True
        tri = torch.arange(i0, i1, device=device)[:, None] < torch.arange(j0, j1, device=device)[None, :]
        block = tri if block is None else (block | tri)
    return block


def _fmix64(x: Tensor) -> Tensor:
    """murmur3's 64-bit finaliser on int64 tensors (logical right shifts, wrapping products)."""
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _FMIX1
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _FMIX2
    return x ^ ((x >> 33) & _LOW31)


def _fmix32(x: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser on an int32 tensor, in place (logical right shifts, wrapping products)."""
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    x.mul_(_FMIX32_1)
    x.bitwise_xor_((x >> 13).bitwise_and_(0x7FFFF))
    x.mul_(_FMIX32_2)
    return x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))


def dropout_multiplier(seed: int, batch: int, heads: Tensor, q_pos: Tensor, k_pos: Tensor, p: float,
                       dtype: torch.dtype = torch.float32, batch_offset: int = 0) -> Tensor:
    """Dropout multiplier ``[batch, len(heads), len(q_pos), len(k_pos)]``: 0 where dropped, ``1/(1-p)`` kept.

    Each entry is a hash of ``(seed, batch row, head, query position, key position)``, so the same
    attention score gets the same decision whatever block or CP rank computes it; the batch rows are
    ``batch_offset ..`` (a call on one sample of a batch keys it by its row in the batch).
    """
    dev = q_pos.device
    b = torch.arange(batch_offset, batch_offset + batch, dtype=torch.int64, device=dev).view(-1, 1, 1)
    h = heads.to(device=dev, dtype=torch.int64).view(1, -1, 1)
    key = _fmix64(torch.tensor(seed, device=dev))
    rows = _fmix64(((b * 65536 + h) * 2**32 + q_pos.to(torch.int64).view(1, 1, -1)) ^ key)
    cols = _fmix64(k_pos.to(device=dev, dtype=torch.int64) * _GOLDEN + key)
    # Rows and columns are hashed once each in 64 bits; each score mixes their 32-bit halves (int32 is
    # half the memory traffic of int64 on the s x s tile: the mask costs about what torch.rand did).
    x = torch.bitwise_xor(rows.to(torch.int32).unsqueeze(-1), cols.to(torch.int32))
    x = _fmix32(x)
    keep = x.bitwise_and_(_LOW31) >= round(p * 2**31)
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


def _dropout_tile(seed: int, pos: tuple, b: int, g: int, r: int, i0: int, i1: int, j0: int, j1: int, p: float,
                  dtype) -> Tensor:
    """The multiplier of the kernel's score tile ``[b, g, r * (i1 - i0), j1 - j0]`` (heads g-major)."""
    q_pos, k_pos, head0 = pos[:3]
    batch0 = pos[3] if len(pos) > 3 else 0
    heads = torch.arange(head0, head0 + g * r, device=q_pos.device)
    z = dropout_multiplier(seed, b, heads, q_pos[i0:i1], k_pos[j0:j1], p, dtype, batch_offset=batch0)
    return z.view(b, g, r * (i1 - i0), j1 - j0)


def _dropout_positions(pos: tuple | None, sq: int, sk: int, device) -> tuple:
    """(query positions, key positions, first head[, first batch row]) of the dropout hash; default: 0.. of this call."""
    if pos is not None:
        return pos
    return torch.arange(sq, device=device), torch.arange(sk, device=device), 0


def _as_mask5(attn_mask: Tensor | None, b: int, g: int, r: int, sq: int, sk: int) -> Tensor | None:
    """View a mask broadcastable to [b, g*r, sq, sk] as [b|1, g|1, r|1, sq, sk] (no copy when possible)."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a bool tensor (True = masked out), got {attn_mask.dtype}")
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    mb, mh = attn_mask.shape[0], attn_mask.shape[1]
    attn_mask = attn_mask.expand(mb, mh, sq, sk)
    if mh == 1:
        return attn_mask.reshape(mb, 1, 1, sq, sk)
    return attn_mask.reshape(mb, g, r, sq, sk)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, causal, scale, dropout_p, seed, block_q, block_k, dropout_pos=None):
        b, hq, sq, d = q.shape
        g, sk, dv = k.shape[1], k.shape[2], v.shape[3]
        r = hq // g
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        mask5 = _as_mask5(attn_mask, b, g, r, sq, sk)
        pos = _dropout_positions(dropout_pos, sq, sk, q.device) if dropout_p > 0.0 else None
        qg = q.reshape(b, g, r, sq, d)
        out = torch.empty(b, g, r, sq, dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, g, r, sq, dtype=acc_dtype, device=q.device)
        for i0 in range(0, sq, block_q):
            i1 = min(i0 + block_q, sq)
            bq = i1 - i0
            qi = qg[:, :, :, i0:i1].reshape(b, g, r * bq, d)
            m = torch.full((b, g, r * bq), float("-inf"), dtype=acc_dtype, device=q.device)
            den = torch.zeros_like(m)
            acc = torch.zeros(b, g, r * bq, dv, dtype=acc_dtype, device=q.device)
            for j0 in range(0, sk, block_k):
                j1 = min(j0 + block_k, sk)
                block = _block_mask(mask5, i0, i1, j0, j1, causal, q.device)
                if block is True:
                    continue
                s = torch.matmul(qi, k[:, :, j0:j1].transpose(-1, -2)).to(acc_dtype).mul_(scale)
                if block is not None:
                    s = s.view(b, g, r, bq, j1 - j0).masked_fill_(block, float("-inf")).view(b, g, r * bq, j1 - j0)
                m_new = torch.maximum(m, s.amax(dim=-1))
                m_safe = m_new.masked_fill(torch.isinf(m_new), 0.0)
                p = torch.exp_(s.sub_(m_safe.unsqueeze(-1)))
                alpha = torch.exp(m - m_safe)
                den.mul_(alpha).add_(p.sum(dim=-1))
                if dropout_p > 0.0:
                    p = p.mul_(_dropout_tile(seed, pos, b, g, r, i0, i1, j0, j1, dropout_p, p.dtype))
                acc.mul_(alpha.unsqueeze(-1)).add_(torch.matmul(p.to(v.dtype), v[:, :, j0:j1]))
                m = m_new
            m_safe = m.masked_fill(torch.isinf(m), 0.0)
            empty = den == 0
            out[:, :, :, i0:i1] = (acc / den.masked_fill(empty, 1.0).unsqueeze(-1)).view(b, g, r, bq, dv)
            lse[:, :, :, i0:i1] = (m_safe + den.log()).masked_fill(empty, float("inf")).view(b, g, r, bq)
        out = out.view(b, hq, sq, dv)
        ctx.save_for_backward(q, k, v, out, lse, attn_mask)
        ctx.args = (causal, scale, dropout_p, seed, block_q, block_k)
        ctx.dropout_pos = pos
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, attn_mask = ctx.saved_tensors
        causal, scale, dropout_p, seed, block_q, block_k = ctx.args
        b, hq, sq, d = q.shape
        g, sk, dv = k.shape[1], k.shape[2], v.shape[3]
        r = hq // g
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        mask5 = _as_mask5(attn_mask, b, g, r, sq, sk)
        pos = getattr(ctx, "dropout_pos", None)
        grad_out = grad_out.contiguous()
        # D_i = rowsum(dO_i * O_i): equals rowsum(P_i * dP_i) also with dropout.
        delta = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(-1).view(b, g, r, sq)
        qg, dog = q.reshape(b, g, r, sq, d), grad_out.view(b, g, r, sq, dv)
        dq = torch.empty(b, g, r, sq, d, dtype=q.dtype, device=q.device)
        dk = torch.zeros(b, g, sk, d, dtype=acc_dtype, device=q.device)
        dvv = torch.zeros(b, g, sk, dv, dtype=acc_dtype, device=q.device)
        for i0 in range(0, sq, block_q):
            i1 = min(i0 + block_q, sq)
            bq = i1 - i0
            qi = qg[:, :, :, i0:i1].reshape(b, g, r * bq, d)
            doi = dog[:, :, :, i0:i1].reshape(b, g, r * bq, dv)
            lse_i = lse[:, :, :, i0:i1].reshape(b, g, r * bq, 1)
            delta_i = delta[:, :, :, i0:i1].reshape(b, g, r * bq, 1)
            dqi = torch.zeros(b, g, r * bq, d, dtype=acc_dtype, device=q.device)
            for j0 in range(0, sk, block_k):
                j1 = min(j0 + block_k, sk)
                block = _block_mask(mask5, i0, i1, j0, j1, causal, q.device)
                if block is True:
                    continue
                kj, vj = k[:, :, j0:j1], v[:, :, j0:j1]
                s = torch.matmul(qi, kj.transpose(-1, -2)).to(acc_dtype).mul_(scale)
                if block is not None:
                    s = s.view(b, g, r, bq, j1 - j0).masked_fill_(block, float("-inf")).view(b, g, r * bq, j1 - j0)
                p = torch.exp_(s.sub_(lse_i))
                dp = torch.matmul(doi, vj.transpose(-1, -2)).to(acc_dtype)
                if dropout_p > 0.0:
                    z = _dropout_tile(seed, pos, b, g, r, i0, i1, j0, j1, dropout_p, p.dtype)
                    p_drop = p * z
                    dp.mul_(z)
                else:
                    p_drop = p
                dvv[:, :, j0:j1] += torch.matmul(p_drop.to(v.dtype).transpose(-1, -2), doi).to(acc_dtype)
                ds = p.mul_(dp.sub_(delta_i)).mul_(scale).to(q.dtype)
                dqi += torch.matmul(ds, kj).to(acc_dtype)
                dk[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2), qi).to(acc_dtype)
            dq[:, :, :, i0:i1] = dqi.view(b, g, r, bq, d)
        return dq.view(b, hq, sq, d), dk.to(k.dtype), dvv.to(v.dtype), None, None, None, None, None, None, None, None


def blockwise_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    block_q: int = 256,
    block_k: int = 256,
    seed: int | None = None,
    head_offset: int = 0,
    dropout_pos: tuple | None = None,
) -> Tensor:
    """Flash-style attention in pure torch on ``[b, n, s, d]``; never holds more than one score block.

    ``seed`` fixes the dropout mask (:func:`dropout_multiplier` of the call's positions 0..s-1, batch
    rows 0..b-1 and heads ``head_offset``..); when None it is drawn from the default generator of the
    query's device (so megatron's RNG tracker fork governs it, as it does for megatron's dropout).
    ``dropout_pos`` ``(query positions, key positions, first head, first batch row)`` replaces those
    keys: a call on a piece of a sequence (one document, one CP block) then drops what the whole would.
    """
    _check_shapes(query, key, value, causal)
    # Contiguous blocks keep the matmuls on oneDNN/MKL's fast paths (bf16 slices of a permuted
    # [s, b, n, d] tensor were 10x slower); the copies are O(s * n * d), nothing next to the scores.
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    seed = dropout_seed(dropout_p, seed, query.device)
    pos = dropout_pos
    if pos is None and head_offset:
        pos = (torch.arange(query.shape[2], device=query.device), torch.arange(key.shape[2], device=query.device),
               int(head_offset))
    return _BlockwiseAttention.apply(
        query, key, value, attn_mask, causal, resolve_softmax_scale(softmax_scale, query.shape[-1]),
        float(dropout_p), int(seed or 0), block_q, block_k, pos,
    )


class _SavedArgs:
    """Stands in for an autograd ctx: what ``_BlockwiseAttention`` keeps when its forward/backward are called
    directly (by the two functions below, for callers that merge blocks themselves)."""

    def save_for_backward(self, *tensors: Tensor) -> None:
        self.saved_tensors = tensors


def blockwise_attention_with_lse(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float,
                                 dropout: tuple | None = None) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the blockwise kernel on ``[b, n, s, d]``; lse ``[b, n_q, s_q]``, accumulation dtype.

    ``dropout``: ``(p, seed, dropout_pos)`` of the position-keyed mask (``dropout_pos`` as in
    :func:`blockwise_attention`); lse is then the undropped rows' log-sum-exp. No autograd: the
    gradients come from :func:`blockwise_attention_with_lse_backward` given the merged ``out`` / ``lse``.
    """
    ctx = _SavedArgs()
    p, seed, pos = dropout or (0.0, 0, None)
    out = _BlockwiseAttention.forward(ctx, q, k, v, None, causal, scale, p, seed, 256, 256, pos)
    return out, ctx.saved_tensors[4].reshape(q.shape[:3])


def blockwise_attention_with_lse_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                          lse: Tensor, *, causal: bool, scale: float,
                                          dropout: tuple | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of one block of the blockwise kernel, given the *final* ``out`` / ``lse`` of its
    rows."""
    ctx = _SavedArgs()
    b, g = k.shape[:2]
    ctx.save_for_backward(q, k, v, out, lse.view(b, g, q.shape[1] // g, q.shape[2]), None)
    p, seed, ctx.dropout_pos = dropout or (0.0, 0, None)
    ctx.args = (causal, scale, p, seed, 256, 256)
    dq, dk, dv = _BlockwiseAttention.backward(ctx, dout)[:3]
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Library kernels
# ----------------------------------------------------------------------------------------------


def sdpa_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with native GQA on ``[b, n, s, d]``."""
    _check_shapes(query, key, value, causal)
    sdpa_mask = None
    if attn_mask is not None:
        sdpa_mask = ~attn_mask  # SDPA's boolean mask is True where attention is *allowed*
        if causal:
            n = query.shape[2]
            sdpa_mask = sdpa_mask & ~torch.triu(torch.ones(n, n, dtype=torch.bool, device=query.device), 1)
            causal = False
    if query.device.type == "cpu" and query.shape[2] > 1:
        # The CPU flash kernel is 5-15% faster (forward + backward) on [b, n, s, d]-contiguous inputs than on
        # the permuted views of megatron's [s, b, n, d]; the copies cost less than that. Not for one query
        # position (a decode step): there copying the KV cache's whole prefix costs more than it saves.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=sdpa_mask, dropout_p=dropout_p, is_causal=causal,
        scale=resolve_softmax_scale(softmax_scale, query.shape[-1]),
        enable_gqa=key.shape[1] != query.shape[1],
    )


def flash_attn_available() -> bool:
    """True when the ``flash-attn`` package imports (CUDA only)."""
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken CUDA extension raises anything
        return False
    return True


def flash_attn_cuda(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
) -> Tensor:
    """The ``flash-attn`` package's kernel (fp16/bf16 CUDA, native GQA, no arbitrary mask) on ``[b, n, s, d]``."""
    from flash_attn import flash_attn_func

    out = flash_attn_func(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=dropout_p,
        softmax_scale=resolve_softmax_scale(softmax_scale, query.shape[-1]), causal=causal,
    )
    return out.transpose(1, 2)


def npu_fusion_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    layout: str = "bnsd",
    causal: bool = False,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    torch_npu: Any = None,
) -> Tensor:
    """``torch_npu.npu_fusion_attention`` for ``[b, n, s, d]`` ("BNSD") or ``[s, b, n, d]`` (as "SBH").

    Causal uses ``sparse_mode=2`` with torch_npu's compressed 2048x2048 upper-triangular mask; a
    causal call that also has a padding mask passes the combined full mask (``sparse_mode=0``).
    """
    npu = require_torch_npu(torch_npu, "npu_fusion_attention")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    head_dim = query.shape[-1]
    if layout == "sbnd":
        s, b, n = query.shape[:3]
        q, k, v = (t.reshape(t.shape[0], t.shape[1], -1) for t in (query, key, value))
        input_layout, sq, sk = "SBH", s, key.shape[0]
    else:
        b, n, s = query.shape[:3]
        q, k, v = query, key, value
        input_layout, sq, sk = "BNSD", s, key.shape[2]
    if causal and sq != sk:
        raise ValueError(f"causal attention needs s_q == s_k, got {sq} and {sk}")
    sparse_mode = 0
    mask = attn_mask
    if causal and attn_mask is None:
        size = NPU_CAUSAL_MASK_SIZE
        mask = torch.triu(torch.ones(size, size, dtype=torch.bool, device=query.device), diagonal=1)
        sparse_mode = 2
    elif causal:
        mask = attn_mask | torch.triu(torch.ones(sq, sk, dtype=torch.bool, device=query.device), diagonal=1)
    out = npu.npu_fusion_attention(
        q, k, v, n, input_layout, atten_mask=mask, scale=resolve_softmax_scale(softmax_scale, head_dim),
        keep_prob=1.0 - dropout_p, sparse_mode=sparse_mode,
    )[0]
    if layout == "sbnd":
        out = out.view(s, b, n, -1)
    return out


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------

ATTENTION_IMPLS = ("auto", "blockwise", "sdpa", "flash_attn", "npu", "math")


def select_attention_impl(query: Tensor, *, attn_mask: Tensor | None, dropout_p: float, backend: str | None = None) -> str:
    """The implementation :func:`flash_attention` uses for these inputs.

    NPU -> ``npu``; CUDA -> ``flash_attn`` (installed, fp16/bf16, no mask) else ``sdpa``; CPU ->
    ``sdpa`` without dropout (torch's flash CPU kernel), else ``blockwise`` (torch's CPU flash
    kernel has no dropout and SDPA would fall back to materialising the scores).
    """
    device = resolve_backend(query, backend)
    if device == "npu":
        return "npu"
    if device == "cuda":
        if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
            return "flash_attn"
        return "sdpa"
    return "sdpa" if dropout_p == 0.0 else "blockwise"


def flash_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    layout: str = "bnsd",
    impl: str = "auto",
    backend: str | None = None,
    torch_npu: Any = None,
) -> Tensor:
    """Memory-efficient attention with native GQA; ``layout`` 'bnsd' or 'sbnd' (output in the same layout).

    ``impl='auto'`` picks per device (:func:`select_attention_impl`); ``backend`` forces the device
    kind ('torch', 'cuda', 'npu') and ``torch_npu`` supplies the module for the NPU path.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl == "auto":
        impl = select_attention_impl(query, attn_mask=attn_mask, dropout_p=dropout_p, backend=backend)
    if impl == "npu":
        return npu_fusion_attention(
            query, key, value, layout=layout, causal=causal, attn_mask=attn_mask, dropout_p=dropout_p,
            softmax_scale=softmax_scale, torch_npu=torch_npu,
        )
    if layout == "sbnd":
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    kwargs = dict(causal=causal, softmax_scale=softmax_scale)
    if impl == "flash_attn":
        if attn_mask is not None:
            raise ValueError("impl='flash_attn' takes no attn_mask: use impl='sdpa'")
        out = flash_attn_cuda(query, key, value, dropout_p=dropout_p, **kwargs)
    elif impl == "sdpa":
        out = sdpa_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    elif impl == "blockwise":
        out = blockwise_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    else:
        if dropout_p:
            raise ValueError("impl='math' is the dropout-free test reference")
        out = attention_math(query, key, value, attn_mask=attn_mask, **kwargs)
    if layout == "sbnd":
        out = out.permute(2, 0, 1, 3)
    return out


def attention_dropout_rng(config: TransformerConfig, dropout_p: float) -> contextlib.AbstractContextManager:
    """The RNG attention dropout draws from: megatron's model-parallel tracker (one stream per TP rank).

    megatron-core's local attention forks the tracker unless ``sequence_parallel`` (then the default
    generator); with no dropout nothing is drawn and nothing is forked.
    """
    if dropout_p > 0.0 and not config.sequence_parallel:
        return tensor_parallel.get_cuda_rng_tracker().fork()
    return contextlib.nullcontext()
