"""megatron-core's local core-attention slot with the flash-style kernels: :class:`FlashDotProductAttention`.

The kernels are :mod:`mindspeed_llm.ops.attention_kernels`; packed samples (document-packed
``packed_seq_params``) go through :mod:`mindspeed_llm.ops.document_attention`, the layer above them.
``--use-flash-attn`` selects this module (:mod:`mindspeed_llm.patches.features`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide
from torch import Tensor

from mindspeed_llm.ops.attention_kernels import attention_dropout_rng, flash_attention
from mindspeed_llm.ops.document_attention import document_core_attention


def is_causal_mask(mask: Tensor, s_q: int, s_k: int) -> bool:
    """True when a bool mask (True = masked) is exactly the causal mask for every batch and head."""
    if s_q != s_k or mask.dtype != torch.bool or mask.shape[-2:] != (s_q, s_k):
        return False
    causal = torch.triu(torch.ones(s_q, s_k, dtype=torch.bool, device=mask.device), diagonal=1)
    return bool(torch.equal(mask, causal.expand_as(mask)))


class FlashDotProductAttention(MegatronModule):
    """Drop-in for megatron-core 0.16.1's local ``DotProductAttention`` backed by
    :func:`~mindspeed_llm.ops.attention_kernels.flash_attention`.

    Same constructor and forward signatures; inputs ``[s, b, n, d]`` (n = this rank's query heads
    for ``query``, its query groups for ``key``/``value``), output ``[s, b, n * d]``. Causal masks
    are applied without materialising scores; a given ``attention_mask`` is used as megatron uses
    it (as the whole mask), and recognised as causal when it is one. Dropout runs under megatron's
    model-parallel RNG tracker like megatron's own. Not supported (raises): context parallelism,
    sliding windows, softmax types other than 'vanilla', attention bias. Packed sequences
    (document-packed ``packed_seq_params``) go to
    :func:`~mindspeed_llm.ops.document_attention.document_core_attention`.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ):
        super().__init__(config=config)
        self.config: TransformerConfig = config
        if config.context_parallel_size != 1:
            raise ValueError(
                "FlashDotProductAttention: context parallelism is not supported; use --context-parallel-size "
                "1"
            )
        if config.softmax_type != "vanilla":
            raise NotImplementedError(
                f"FlashDotProductAttention: softmax_type={config.softmax_type!r} is not supported; drop "
                "--use-flash-attn"
            )
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
            raise NotImplementedError(
                "FlashDotProductAttention: sliding-window attention is not supported; drop --use-flash-attn"
            )
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        world_size = pg_collection.tp.size()
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, world_size)
        self.hidden_size_per_attention_head = divide(projection_size, config.num_attention_heads)
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, world_size)
        self.num_query_groups_per_partition = divide(config.num_query_groups, world_size)
        self.softmax_scale = (
            1.0 / math.sqrt(self.hidden_size_per_attention_head) if softmax_scale is None else softmax_scale
        )
        # megatron divides the scale by the layer number and multiplies it back in fp32 softmax:
        # the product is what the kernel needs.
        self.kernel_softmax_scale = self.softmax_scale
        if config.apply_query_key_layer_scaling:
            self.softmax_scale /= self.layer_number
        self.attention_dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )
        self.impl = "auto"

    # None: kernels follow the tensors' device; the --use-flash-attn patch may pin 'torch'/'cuda'/'npu'.
    backend: str | None = None

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> Tensor:
        """Attention over ``[s, b, n, d]`` inputs; returns ``[s_q, b, n_q * d]``."""
        if attention_bias is not None:
            raise NotImplementedError("FlashDotProductAttention: attention_bias is not supported")
        dropout_p = self.attention_dropout_p if self.training else 0.0
        if packed_seq_params is not None:  # packed samples: causal within each document
            return document_core_attention(self, query, key, value, attention_mask, packed_seq_params,
                                           softmax_scale=self.kernel_softmax_scale, dropout_p=dropout_p,
                                           backend=self.backend)
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        s_q, b = query.shape[0], query.shape[1]
        s_k = key.shape[0]
        causal = mask_type == AttnMaskType.causal and attention_mask is None and s_q > 1
        mask = attention_mask
        if mask is not None and mask_type == AttnMaskType.causal and is_causal_mask(mask, s_q, s_k):
            causal, mask = True, None
        with attention_dropout_rng(self.config, dropout_p):
            context = flash_attention(
                query, key, value, causal=causal, attn_mask=mask, dropout_p=dropout_p,
                softmax_scale=self.kernel_softmax_scale, layout="sbnd", impl=self.impl, backend=self.backend,
            )
        return context.reshape(s_q, b, self.hidden_size_per_partition)
