"""Document-masked (packed-sample) causal attention: each document attends causally within itself only.

Inputs are megatron's ``[s, b, n, d]`` tensors (n_q a multiple of n_kv) and ``cu_seqlens``, the document
boundaries over the flattened ``b * s`` tokens (sample-major; see :mod:`mindspeed_llm.ops.packing`).

A layer above the kernels: it runs :mod:`~mindspeed_llm.ops.attention_kernels` per document and, over a
CP group, Ulysses of :mod:`~mindspeed_llm.ops.context_parallel_kernels`
(:func:`ulysses_document_attention`); neither imports this module or :mod:`~mindspeed_llm.ops.packing`.
The megatron-core modules (:class:`~mindspeed_llm.ops.attention.FlashDotProductAttention`,
:class:`~mindspeed_llm.ops.context_parallel.ContextParallelAttention`, megatron's own local attention
through :mod:`mindspeed_llm.patches.packed`) call it for document-packed ``packed_seq_params``.

Implementations (:func:`select_document_attention_impl` picks one per device):

- ``per_document`` (CPU; CUDA without flash-attn): one causal kernel call per document on the
  token-major view: torch's SDPA (on the CPU its flash kernel) without dropout,
  :func:`~mindspeed_llm.ops.attention_kernels.blockwise_attention` with it (one seed per call; each document keyed by its batch row and positions in the sample, so the
  mask is the whole batch's and context parallelism draws the same one). Computes only the ``sum(len_i^2) / 2`` scores that exist and never holds more than one
  document's kernel state; measured fastest on the CPU (docs/performance_journal.md,
  "Document-masked attention").
- ``sdpa_mask``: SDPA over whole samples with a block-diagonal causal bool mask ``[b, 1, s, s]`` (one mask
  per sample, shared by the heads; SDPA computes every block).
- ``blockwise_mask``: the blockwise kernel with that mask (it skips blocks no document covers).
- ``flash_attn_varlen`` (CUDA, fp16/bf16, flash-attn installed): ``flash_attn_varlen_func`` with cu_seqlens.
- ``npu``: ``torch_npu.npu_fusion_attention`` in layout "TND" with ``actual_seq_qlen``/``actual_seq_kvlen``
  the cumulative document ends, band mode (``sparse_mode=4``, ``next_tockens=0``) with the compressed
  causal mask, as MindSpeed-LLM calls it for ``--reset-attention-mask``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mindspeed_llm.ops.attention_kernels import (
    NPU_CAUSAL_MASK_SIZE,
    attention_dropout_rng,
    blockwise_attention,
    dropout_seed,
    flash_attn_available,
    resolve_softmax_scale,
    sdpa_attention,
)
from mindspeed_llm.ops.backend import resolve_backend
from mindspeed_llm.ops.context_parallel_kernels import ulysses_attention
from mindspeed_llm.ops.npu import require_torch_npu
from mindspeed_llm.ops.packing import check_document_packed, document_ids

DOCUMENT_ATTENTION_IMPLS = ("auto", "per_document", "sdpa_mask", "blockwise_mask", "flash_attn_varlen", "npu")


def _check(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor) -> None:
    if query.dim() != 4 or key.shape[:2] != query.shape[:2] or value.shape[:3] != key.shape[:3]:
        raise ValueError(
            f"document attention expects [s, b, n, d] q/k/v of one length and batch, got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[2] % key.shape[2] != 0:
        raise ValueError(f"query heads ({query.shape[2]}) must be a multiple of key/value heads ({key.shape[2]})")
    if int(cu_seqlens[-1]) != query.shape[0] * query.shape[1]:
        raise ValueError(f"cu_seqlens end at {int(cu_seqlens[-1])}, expected s * b = {query.shape[0] * query.shape[1]}")


def _tokens(t: Tensor) -> Tensor:
    """``[s, b, n, d]`` -> token-major ``[b * s, n, d]`` (contiguous)."""
    return t.transpose(0, 1).reshape(t.shape[0] * t.shape[1], t.shape[2], t.shape[3])


def _from_tokens(t: Tensor, s: int, b: int) -> Tensor:
    """Token-major ``[b * s, n, d]`` -> ``[s, b, n, d]``."""
    return t.view(b, s, t.shape[1], t.shape[2]).transpose(0, 1)


def document_mask(cu_seqlens: Tensor, s: int, b: int) -> Tensor:
    """The block-diagonal causal mask ``[b, 1, s, s]`` (True = masked out) of the documents."""
    doc = document_ids(cu_seqlens, b, s)
    same = doc[:, :, None] == doc[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc.device).tril_()
    return ~(same & causal).unsqueeze(1)


def per_document_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, *,
                           softmax_scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None,
                           head_offset: int = 0) -> Tensor:
    """One causal kernel call per document (SDPA; blockwise with dropout) on ``[s, b, n, d]``.

    Dropout: one ``seed`` for the call (drawn when None), each document keyed by its sample's batch row
    and its tokens' positions in the sample (heads from ``head_offset``): the mask of the whole batch
    (:func:`~mindspeed_llm.ops.attention_kernels.dropout_multiplier`), whatever splits the sequence.
    """
    s, b = query.shape[:2]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    starts = cu_seqlens[:-1].tolist()
    pieces = [_tokens(t).split(lengths) for t in (query, key, value)]
    seed = dropout_seed(dropout_p, seed, query.device)
    outs = []
    for start, q, k, v in zip(starts, *pieces):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, n, len, d]
        if dropout_p > 0.0:
            row, first = divmod(start, s)  # documents never cross samples
            pos = torch.arange(first, first + q.shape[2], device=q.device)
            out = blockwise_attention(q, k, v, causal=True, dropout_p=dropout_p, softmax_scale=softmax_scale,
                                      seed=seed, dropout_pos=(pos, pos, int(head_offset), row))
        else:
            out = sdpa_attention(q, k, v, causal=True, softmax_scale=softmax_scale)
        outs.append(out[0].transpose(0, 1))
    return _from_tokens(torch.cat(outs), s, b)


def masked_document_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, *, kernel: str,
                              softmax_scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None,
                              head_offset: int = 0) -> Tensor:
    """Whole samples with the block-diagonal causal mask, through SDPA or the blockwise kernel.

    The blockwise kernel's dropout is keyed by (batch row, head from ``head_offset``, positions in the
    sample): with the same ``seed`` it drops what :func:`per_document_attention` drops. SDPA draws its own.
    """
    s, b = query.shape[:2]
    mask = document_mask(cu_seqlens, s, b)
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    if kernel == "sdpa":
        out = sdpa_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, softmax_scale=softmax_scale)
    else:
        out = blockwise_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, softmax_scale=softmax_scale,
                                  seed=seed, head_offset=head_offset)
    return out.permute(2, 0, 1, 3)


def flash_attn_varlen_documents(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_seqlen: int, *,
                                softmax_scale: float | None = None, dropout_p: float = 0.0) -> Tensor:
    """flash-attn's ``flash_attn_varlen_func`` (CUDA, fp16/bf16, native GQA) over the documents."""
    from flash_attn import flash_attn_varlen_func

    s, b = query.shape[:2]
    cu = cu_seqlens.to(device=query.device, dtype=torch.int32)
    out = flash_attn_varlen_func(
        _tokens(query), _tokens(key), _tokens(value), cu, cu, max_seqlen, max_seqlen, dropout_p=dropout_p,
        softmax_scale=resolve_softmax_scale(softmax_scale, query.shape[-1]), causal=True,
    )
    return _from_tokens(out, s, b)


def npu_document_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, *,
                           softmax_scale: float | None = None, dropout_p: float = 0.0, torch_npu: Any = None) -> Tensor:
    """``npu_fusion_attention`` in "TND" with the cumulative document ends as actual sequence lengths."""
    npu = require_torch_npu(torch_npu, "document attention")
    s, b, n = query.shape[:3]
    ends = cu_seqlens[1:].tolist()  # the op takes cumulative ends (no leading 0) as host integers
    mask = torch.triu(torch.ones(NPU_CAUSAL_MASK_SIZE, NPU_CAUSAL_MASK_SIZE, dtype=torch.bool, device=query.device), 1)
    out = npu.npu_fusion_attention(
        _tokens(query), _tokens(key), _tokens(value), n, "TND", atten_mask=mask,
        scale=resolve_softmax_scale(softmax_scale, query.shape[-1]), keep_prob=1.0 - dropout_p, pre_tockens=s * b,
        next_tockens=0,
        actual_seq_qlen=ends, actual_seq_kvlen=ends, sparse_mode=4,
    )[0]
    return _from_tokens(out, s, b)


def select_document_attention_impl(query: Tensor, *, backend: str | None = None) -> str:
    """NPU -> ``npu``; CUDA -> ``flash_attn_varlen`` (installed, fp16/bf16); else ``per_document``.

    Not ``sdpa_mask`` on CUDA without flash-attn: SDPA keeps its mask for backward (as a float bias on the
    memory-efficient kernel), ``b * s * s`` per layer, where one SDPA call per document keeps nothing ``s x s``.
    """
    device = resolve_backend(query, backend)
    if device == "npu":
        return "npu"
    if device == "cuda" and query.dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
        return "flash_attn_varlen"
    return "per_document"


def document_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_seqlen: int | None = None,
                       *, softmax_scale: float | None = None, dropout_p: float = 0.0, impl: str = "auto",
                       backend: str | None = None, torch_npu: Any = None, seed: int | None = None,
                       head_offset: int = 0) -> Tensor:
    """Causal attention within each document of ``[s, b, n, d]`` q/k/v; returns ``[s, b, n_q, d]``.

    Dropout in ``per_document`` and ``blockwise_mask``: one mask per call keyed by (``seed``, batch row,
    head from ``head_offset``, query and key position in the sample), ``seed`` drawn from the current
    generator when None; the library kernels (``sdpa_mask``, ``flash_attn_varlen``, ``npu``) draw their own.
    """
    if impl not in DOCUMENT_ATTENTION_IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {DOCUMENT_ATTENTION_IMPLS}")
    _check(query, key, value, cu_seqlens)
    if impl == "auto":
        impl = select_document_attention_impl(query, backend=backend)
    kwargs = dict(softmax_scale=softmax_scale, dropout_p=dropout_p)
    keyed = dict(seed=seed, head_offset=head_offset)
    if impl == "npu":
        return npu_document_attention(query, key, value, cu_seqlens, torch_npu=torch_npu, **kwargs)
    if impl == "flash_attn_varlen":
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return flash_attn_varlen_documents(query, key, value, cu_seqlens, max_seqlen, **kwargs)
    if impl == "per_document":
        return per_document_attention(query, key, value, cu_seqlens, **kwargs, **keyed)
    if impl == "blockwise_mask":
        return masked_document_attention(query, key, value, cu_seqlens, kernel="blockwise", **kwargs, **keyed)
    return masked_document_attention(query, key, value, cu_seqlens, kernel="sdpa", **kwargs)


def ulysses_document_attention(query: Tensor, key: Tensor, value: Tensor, group, cu_seqlens: Tensor,
                               max_seqlen: int | None = None, *, softmax_scale: float | None = None,
                               dropout_p: float = 0.0, seed: int | None = None,
                               backend: str | None = None) -> Tensor:
    """Ulysses over a CP group with :func:`document_attention` as its local attention; ``[s_local, b, n, d]``.

    ``cu_seqlens``: the documents of the *whole* ``[b, S]`` batch (over its ``b * S`` tokens,
    :func:`~mindspeed_llm.ops.packing.document_packed_seq_params` with the CP group); after the all-to-all
    each rank attends within the documents of the whole sequence for its heads, its dropout (CPU: per
    document, blockwise) keyed by the global head index (``seed`` drawn then, the same on every CP rank).
    """
    def local(q: Tensor, k: Tensor, v: Tensor, head_offset: int) -> Tensor:
        return document_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=softmax_scale,
                                  backend=backend, dropout_p=dropout_p,
                                  seed=dropout_seed(dropout_p, seed, q.device), head_offset=head_offset)

    return ulysses_attention(query, key, value, group, local_attention=local)


def document_core_attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                            packed_seq_params: Any, *, softmax_scale: float, dropout_p: float,
                            impl: str = "auto", backend: str | None = None) -> Tensor:
    """A megatron core-attention module's forward for document-packed parameters: ``[s, b, n, d]`` -> ``[s, b, n*d]``.

    Shared by megatron's local ``DotProductAttention`` (patched) and ``FlashDotProductAttention``;
    dropout runs under megatron's model-parallel RNG tracker as the modules' own dropout does.
    """
    config = module.config
    if packed_seq_params.qkv_format != "sbhd":
        raise ValueError(f"packed_seq_params.qkv_format={packed_seq_params.qkv_format!r} needs Transformer "
                         "Engine: build them with mindspeed_llm.ops.packing.document_packed_seq_params "
                         "(qkv_format 'sbhd')")
    if config.context_parallel_size != 1:
        raise ValueError("packed sequences with context parallelism run in ContextParallelAttention (the core "
                         "attention --context-parallel-size selects), not in this local attention")
    if attention_mask is not None:
        raise ValueError("packed sequences take attention_mask=None: the documents in packed_seq_params are the mask")
    s, b = query.shape[:2]
    cu_seqlens = check_document_packed(packed_seq_params, b, s)
    with attention_dropout_rng(config, dropout_p):  # one seed per call, drawn as the unpacked path draws it
        out = document_attention(query, key, value, cu_seqlens, packed_seq_params.max_seqlen_q,
                                 softmax_scale=softmax_scale, dropout_p=dropout_p, impl=impl, backend=backend)
    return out.reshape(s, b, -1)
