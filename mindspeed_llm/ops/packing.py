"""Packed samples: several documents in one ``[b, s]`` sample, described as megatron-core's
``PackedSeqParams``.

A packed batch keeps megatron's ``[s, b, ...]`` activations (``qkv_format='sbhd'``); the documents are
given by ``cu_seqlens`` over the *flattened* ``b * s`` tokens (sample-major, as ``position_ids.flatten()``
orders them): document ``i`` is tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``. A document never crosses a
sample boundary. With these parameters the GPTModel attends causally within each document only
(:mod:`mindspeed_llm.ops.document_attention`, which builds on this module) and RoPE positions restart at
each document (:mod:`mindspeed_llm.patches.packed`). This module imports no other part of ``ops``: the
attention kernels take the documents as plain tensors (``cu_seqlens``, per-token document ids).

With context parallelism (``cp_group`` of more than one rank) the parameters describe the *whole*
``[b, s]`` batch as it was before megatron-core's ``get_batch_on_this_cp_rank`` split it, while the
activations hold this rank's chunk pair: the attention (:mod:`mindspeed_llm.ops.context_parallel`)
masks every block by its tokens' document ids, and RoPE takes this rank's tokens' positions inside
their documents, cut from the whole batch's positions as megatron-core cuts the batch.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

QKV_FORMAT = "sbhd"


def document_packed_seq_params(position_ids: Tensor, cp_group=None) -> PackedSeqParams:
    """Documents of a packed ``[b, s]`` batch: one starts where ``position_ids == 0`` and at each sample's
    start.

    Returns ``PackedSeqParams(qkv_format='sbhd')`` with int32 ``cu_seqlens`` over the flattened ``b * s``
    tokens (same tensor for queries and keys) and the longest document as ``max_seqlen``. With
    ``cp_group`` (context parallelism), ``position_ids`` must be the whole batch's, before the CP split.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [batch, seq], got shape {tuple(position_ids.shape)}")
    b, s = position_ids.shape
    starts = position_ids == 0
    starts[:, 0] = True
    begins = starts.reshape(-1).nonzero().squeeze(1)
    total = torch.tensor([b * s], dtype=begins.dtype, device=begins.device)
    cu_seqlens = torch.cat([begins, total]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if cp_group is not None and cp_group.size() == 1:
        cp_group = None
    return PackedSeqParams(qkv_format=QKV_FORMAT, cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen, cp_group=cp_group)


def context_parallel_size(packed_seq_params: PackedSeqParams) -> int:
    """How many CP ranks share the sequences the parameters describe (1: the activations hold them whole)."""
    group = packed_seq_params.cp_group
    return 1 if group is None else group.size()


def is_document_packed(packed_seq_params: PackedSeqParams | None) -> bool:
    """True for parameters of the kind :func:`document_packed_seq_params` makes (sbhd with cu_seqlens)."""
    return (packed_seq_params is not None and packed_seq_params.qkv_format == QKV_FORMAT
            and packed_seq_params.cu_seqlens_q is not None)


def check_document_packed(packed_seq_params: PackedSeqParams, batch: int, seq: int) -> Tensor:
    """Validate document-packed parameters for a ``[seq, batch]`` activation; return ``cu_seqlens``."""
    cu = packed_seq_params.cu_seqlens_q
    kv = packed_seq_params.cu_seqlens_kv
    if kv is not None and kv is not cu and not torch.equal(kv, cu):
        raise ValueError(
            "packed_seq_params: cu_seqlens_kv must equal cu_seqlens_q (self-attention over documents)"
        )
    if (
        packed_seq_params.cu_seqlens_q_padded is not None
        or packed_seq_params.cu_seqlens_kv_padded is not None
    ):
        raise ValueError("packed_seq_params: padded cu_seqlens are not supported with qkv_format 'sbhd'")
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != batch * seq:
        raise ValueError(
            f"packed_seq_params: cu_seqlens must run from 0 to batch*seq = {batch * seq} (they run from "
            f"{int(cu[0])} to {int(cu[-1])}): build them with document_packed_seq_params(position_ids)"
        )
    lengths = cu[1:] - cu[:-1]
    if bool((lengths <= 0).any()):
        raise ValueError("packed_seq_params: cu_seqlens must be strictly increasing (no empty documents)")
    sample_starts = torch.arange(0, batch * seq, seq, device=cu.device, dtype=cu.dtype)
    if not bool(torch.isin(sample_starts, cu).all()):
        raise ValueError(
            "packed_seq_params: a document crosses a sample boundary; every sample must start a document"
        )
    return cu


def document_ids(cu_seqlens: Tensor, batch: int, seq: int) -> Tensor:
    """Each token's document number ``[batch, seq]`` (int64, counted over the flattened tokens from 0)."""
    doc = torch.zeros(batch * seq, dtype=torch.int64, device=cu_seqlens.device)
    doc[cu_seqlens[1:-1].long()] = 1
    return doc.cumsum_(0).view(batch, seq)


def cp_rank_tokens(x: Tensor, cp_group) -> Tensor:
    """This CP rank's chunk pair of a ``[b, s]`` tensor, cut as megatron-core's ``get_batch_on_this_cp_rank``
    cuts."""
    if cp_group is None or cp_group.size() == 1:
        return x
    from megatron.core.utils import get_batch_on_this_cp_rank

    return get_batch_on_this_cp_rank({"x": x}, cp_group=cp_group)["x"]


def document_positions(cu_seqlens: Tensor) -> Tensor:
    """Each token's position inside its document, over the flattened tokens (``[cu_seqlens[-1]]``, int64)."""
    cu = cu_seqlens.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    total = int(cu[-1])
    return torch.arange(total, device=cu.device) - torch.repeat_interleave(
        cu[:-1], lengths, output_size=total
    )


def document_rotary_freqs(freqs: Tensor, cu_seqlens: Tensor, seq: int, cp_group=None) -> Tensor:
    """RoPE angles restarting at each document: ``freqs`` ``[L, 1, 1, d]`` (positions 0..L-1) ->
    ``[seq, b, 1, d]``.

    With ``cp_group`` (``cu_seqlens`` of the whole batch, ``seq`` the local length) the angles are those
    of this CP rank's chunk pair: positions inside their documents of the whole sequence, then cut.
    """
    cp = 1 if cp_group is None else cp_group.size()
    positions = document_positions(cu_seqlens).to(freqs.device)
    batch = positions.numel() // (seq * cp)
    positions = cp_rank_tokens(positions.view(batch, seq * cp), cp_group)
    table = freqs.reshape(freqs.shape[0], freqs.shape[-1])
    return table[positions].view(batch, seq, 1, -1).transpose(0, 1)
