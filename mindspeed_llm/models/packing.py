"""Packed samples: several documents in one ``[b, s]`` sample, described as megatron-core's ``PackedSeqParams``.

A packed batch keeps megatron's ``[s, b, ...]`` activations (``qkv_format='sbhd'``); the documents are
given by ``cu_seqlens`` over the *flattened* ``b * s`` tokens (sample-major, as ``position_ids.flatten()``
orders them): document ``i`` is tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``. A document never crosses a
sample boundary. With these parameters the GPTModel attends causally within each document only
(:mod:`mindspeed_llm.ops.document_attention`) and RoPE positions restart at each document
(:mod:`mindspeed_llm.patches.packed`).
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

QKV_FORMAT = "sbhd"


def document_packed_seq_params(position_ids: Tensor) -> PackedSeqParams:
    """Documents of a packed ``[b, s]`` batch: one starts where ``position_ids == 0`` and at each sample's start.

    Returns ``PackedSeqParams(qkv_format='sbhd')`` with int32 ``cu_seqlens`` over the flattened ``b * s``
    tokens (same tensor for queries and keys) and the longest document as ``max_seqlen``.
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
    return PackedSeqParams(qkv_format=QKV_FORMAT, cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)


def is_document_packed(packed_seq_params: PackedSeqParams | None) -> bool:
    """True for parameters of the kind :func:`document_packed_seq_params` makes (sbhd with cu_seqlens)."""
    return (packed_seq_params is not None and packed_seq_params.qkv_format == QKV_FORMAT
            and packed_seq_params.cu_seqlens_q is not None)


def check_document_packed(packed_seq_params: PackedSeqParams, batch: int, seq: int) -> Tensor:
    """Validate document-packed parameters for a ``[seq, batch]`` activation; return ``cu_seqlens``."""
    cu = packed_seq_params.cu_seqlens_q
    kv = packed_seq_params.cu_seqlens_kv
    if kv is not None and kv is not cu and not torch.equal(kv, cu):
        raise ValueError("packed_seq_params: cu_seqlens_kv must equal cu_seqlens_q (self-attention over documents)")
    if packed_seq_params.cu_seqlens_q_padded is not None or packed_seq_params.cu_seqlens_kv_padded is not None:
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
        raise ValueError("packed_seq_params: a document crosses a sample boundary; every sample must start a document")
    return cu


def document_positions(cu_seqlens: Tensor) -> Tensor:
    """Each token's position inside its document, over the flattened tokens (``[cu_seqlens[-1]]``, int64)."""
    cu = cu_seqlens.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    total = int(cu[-1])
    return torch.arange(total, device=cu.device) - torch.repeat_interleave(cu[:-1], lengths, output_size=total)


def document_rotary_freqs(freqs: Tensor, cu_seqlens: Tensor, seq: int) -> Tensor:
    """RoPE angles restarting at each document: ``freqs`` ``[L, 1, 1, d]`` (positions 0..L-1) -> ``[seq, b, 1, d]``."""
    positions = document_positions(cu_seqlens).to(freqs.device)
    batch = positions.numel() // seq
    table = freqs.reshape(freqs.shape[0], freqs.shape[-1])
    return table[positions].view(batch, seq, 1, -1).transpose(0, 1)
