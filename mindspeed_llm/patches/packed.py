"""Packed samples in megatron-core's GPTModel without Transformer Engine (base patches, group ``ops``).

megatron-core 0.16.1 handles ``packed_seq_params`` only in Transformer Engine's attention: its local
``DotProductAttention`` asserts ``packed_seq_params is None``, and for ``qkv_format='sbhd'`` its RoPE
uses positions ``0..max_seqlen-1`` for every sample. With document-packed parameters
(:func:`mindspeed_llm.ops.packing.document_packed_seq_params`) these patches make

- ``DotProductAttention.forward`` attend causally within each document
  (:func:`~mindspeed_llm.ops.document_attention.document_core_attention`); without packed parameters it
  is megatron's own. ``FlashDotProductAttention`` (``--use-flash-attn``) does the same natively.
- ``GPTModel._preprocess`` return RoPE angles gathered per token at its position inside its document
  (``[s, b, 1, d]``, which megatron's rotate-half broadcasts over heads), so positions restart at each
  document as they do when each document runs alone. With context parallelism (parameters carrying the
  CP group, ``cu_seqlens`` of the whole batch) the angles are this CP rank's chunk pair's.

Both only change what megatron refused or computed for the whole sample: calls without document-packed
parameters run megatron's code unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from mindspeed_llm.patches.registry import PatchRegistry

DOT_PRODUCT_ATTENTION_FORWARD = "megatron.core.transformer.dot_product_attention.DotProductAttention.forward"
GPT_PREPROCESS = "megatron.core.models.gpt.gpt_model.GPTModel._preprocess"
_ROTARY_TYPES = ("rope", "yarn")


def _local_document_attention(module, query, key, value, attention_mask, attention_bias, packed_seq_params):
    """megatron's local attention module over packed documents (its scale, dropout and RNG conventions)."""
    from mindspeed_llm.ops.document_attention import document_core_attention

    if attention_bias is not None:
        raise NotImplementedError("packed sequences: attention_bias is not supported")
    if module.softmax_offset is not None or module.scale_mask_softmax.window_size is not None:
        raise NotImplementedError("packed sequences: sliding windows and softmax offsets are not supported")
    # megatron divides the scale by the layer number and its softmax multiplies it back.
    scale = module.softmax_scale * (module.layer_number if module.config.apply_query_key_layer_scaling else 1)
    dropout_p = module.attention_dropout.p if module.training else 0.0
    return document_core_attention(module, query, key, value, attention_mask, packed_seq_params,
                                   softmax_scale=scale, dropout_p=dropout_p)


def _dot_product_attention_wrapper(original: Callable) -> Callable:
    @functools.wraps(original)
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None:
            return original(self, query, key, value, attention_mask, attn_mask_type, attention_bias,
                            packed_seq_params)
        return _local_document_attention(self, query, key, value, attention_mask, attention_bias,
                                         packed_seq_params)

    return forward


def _rotary_seq_length(model, decoder_input) -> int:
    """The sequence length of this rank's activations (sequence-parallel shards gathered; a CP rank's)."""
    hidden = decoder_input if decoder_input is not None else model.decoder.input_tensor
    seq = hidden.shape[0]
    if model.config.sequence_parallel:
        seq *= model.config.tensor_model_parallel_size
    return seq


def _preprocess_wrapper(original: Callable) -> Callable:
    from mindspeed_llm.ops.packing import document_rotary_freqs, is_document_packed

    @functools.wraps(original)
    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                    packed_seq_params=None, padding_mask=None):
        packed = is_document_packed(packed_seq_params)
        # 'thd' tells megatron's RoPE the table is indexed per token: positions 0..max_seqlen-1, never cut
        # per CP rank (megatron's get_pos_emb_on_this_cp_rank); the tokens' own positions are gathered below.
        table_params = (dataclasses.replace(packed_seq_params, qkv_format="thd") if packed
                        else packed_seq_params)
        out = original(self, input_ids=input_ids, position_ids=position_ids, decoder_input=decoder_input,
                       inference_context=inference_context, packed_seq_params=table_params,
                       padding_mask=padding_mask)
        if not packed or out[1] is None or self.position_embedding_type not in _ROTARY_TYPES:
            return out
        seq = _rotary_seq_length(self, out[0])
        freqs = document_rotary_freqs(out[1], packed_seq_params.cu_seqlens_q, seq, packed_seq_params.cp_group)
        return (out[0], freqs) + tuple(out[2:])

    return _preprocess


def register_packed_sequence_patches(reg: PatchRegistry, group: str) -> None:
    """Register the two packed-sample patches in ``group`` (applied with the base op patches)."""
    reg.register(DOT_PRODUCT_ATTENTION_FORWARD, wrapper=_dot_product_attention_wrapper, group=group,
                 signature="(self, query, key, value, attention_mask, attn_mask_type=None, "
                           "attention_bias=None, packed_seq_params=None)",
                 description="local attention: document-masked with packed_seq_params (megatron's asserts)")
    reg.register(GPT_PREPROCESS, wrapper=_preprocess_wrapper, group=group,
                 signature="(self, input_ids, position_ids, decoder_input=None, inference_context=None, "
                           "packed_seq_params=None, padding_mask=None)",
                 description="GPTModel RoPE positions restart per document with packed_seq_params (private "
                             "_preprocess: the one place the RoPE angles and packed parameters meet)")
