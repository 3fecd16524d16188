"""megatron-core's core-attention slot for ``--context-parallel-size`` > 1: :class:`ContextParallelAttention`.

It runs the ring, Ulysses and hybrid kernels of :mod:`mindspeed_llm.ops.context_parallel_kernels`, and
for packed samples reads the documents from ``packed_seq_params`` (:mod:`mindspeed_llm.ops.packing`) and
runs Ulysses over :mod:`mindspeed_llm.ops.document_attention`. Hybrid's ``[ulysses, ring]`` sub-groups
come from :func:`mindspeed_llm.runtime.parallel.initialize_hybrid_cp_groups`.
"""

from __future__ import annotations

import math
from typing import Any

from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide
from torch import Tensor

from mindspeed_llm.ops.attention_kernels import attention_dropout_rng
from mindspeed_llm.ops.context_parallel_kernels import (
    CP_COMM_TYPES,
    hybrid_attention,
    ring_attention,
    ulysses_attention,
)
from mindspeed_llm.ops.document_attention import ulysses_document_attention
from mindspeed_llm.ops.packing import (
    check_document_packed,
    context_parallel_size,
    document_ids,
    is_document_packed,
)


class ContextParallelAttention(MegatronModule):
    """megatron-core's local ``DotProductAttention`` slot for ``context_parallel_size > 1``.

    ``cp_comm_type`` 'p2p' (``megatron_cp_algo``) runs :func:`ring_attention`, 'a2a'
    (``ulysses_cp_algo``) :func:`ulysses_attention`, 'a2a+p2p' (``hybrid_cp_algo``)
    :func:`hybrid_attention` over ``pg_collection.hcp`` (``[ulysses, ring]``). Causal self-attention, no explicit
    attention mask; packed samples (``--reset-attention-mask``) with document-packed ``packed_seq_params``
    whose ``cu_seqlens`` describe the whole batch before the CP split
    (:func:`~mindspeed_llm.ops.packing.document_packed_seq_params` with the CP group): each document
    attends causally within itself. Attention dropout with every algorithm (packed samples too),
    drawn from megatron's model-parallel RNG like its local attention (the seed is the same on every CP
    rank: the masks are keyed by global positions and heads).
    """

    # None: kernels follow the tensors' device; tests may pin 'torch'/'cuda'/'npu'.
    backend: str | None = None

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection: ProcessGroupCollection | None = None):
        super().__init__(config=config)
        self.config: TransformerConfig = config
        comm = cp_comm_type or "p2p"
        if comm not in CP_COMM_TYPES.values():
            raise NotImplementedError(f"ContextParallelAttention: cp_comm_type={comm!r} is not supported; use "
                                      "--context-parallel-algo megatron_cp_algo, ulysses_cp_algo or hybrid_cp_algo")
        if attn_mask_type != AttnMaskType.causal or attention_type != "self":
            raise NotImplementedError("ContextParallelAttention: causal self-attention only")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.attention_dropout_p = dropout
        self.comm = comm
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp", "hcp"])
        self.cp_group = pg_collection.cp
        self.hcp_groups = getattr(pg_collection, "hcp", None)
        if comm == "a2a+p2p" and (not self.hcp_groups or len(self.hcp_groups) != 2):
            raise RuntimeError("ContextParallelAttention: hybrid_cp_algo needs the [ulysses, ring] sub-groups of "
                               "the CP group: call mindspeed_llm.runtime.parallel.initialize_hybrid_cp_groups "
                               "after initialize_model_parallel")
        tp = pg_collection.tp.size()
        projection = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection, tp)
        head_dim = divide(projection, config.num_attention_heads)
        # megatron folds layer-number scaling in and out again in fp32 softmax: the kernel needs the plain scale.
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                attn_mask_type: AttnMaskType | None = None, attention_bias: Tensor | None = None,
                packed_seq_params: Any = None) -> Tensor:
        """Attention over this rank's ``[s_local, b, n, d]`` chunk pair; returns ``[s_local, b, n_q * d]``."""
        if attention_bias is not None:
            raise NotImplementedError("ContextParallelAttention: attention bias is not supported")
        if attention_mask is not None:
            raise NotImplementedError("ContextParallelAttention: an explicit attention mask is not supported "
                                      "(context parallelism is causal, or per document with packed samples)")
        s, b = query.shape[:2]
        dropout_p = self.attention_dropout_p if self.training else 0.0
        documents = self._documents(packed_seq_params, b, s)
        # The ring (also hybrid's) masks by per-token document ids; Ulysses takes the cu_seqlens themselves.
        ids = None if documents is None or self.comm == "a2a" else document_ids(documents[0], b, s * self.cp_group.size())
        with attention_dropout_rng(self.config, dropout_p):
            if self.comm == "a2a" and documents is not None:
                out = ulysses_document_attention(query, key, value, self.cp_group, *documents,
                                                 softmax_scale=self.softmax_scale, dropout_p=dropout_p,
                                                 backend=self.backend)
            elif self.comm == "a2a":
                out = ulysses_attention(query, key, value, self.cp_group, softmax_scale=self.softmax_scale,
                                        dropout_p=dropout_p, backend=self.backend)
            elif self.comm == "a2a+p2p":
                out = hybrid_attention(query, key, value, *self.hcp_groups, softmax_scale=self.softmax_scale,
                                       backend=self.backend, dropout_p=dropout_p, document_ids=ids)
            else:
                q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
                out = ring_attention(q, k, v, self.cp_group, softmax_scale=self.softmax_scale, backend=self.backend,
                                     dropout_p=dropout_p, document_ids=ids).permute(2, 0, 1, 3)
        return out.reshape(s, b, self.hidden_size_per_partition)

    def _documents(self, packed_seq_params: Any, b: int, s: int) -> tuple[Tensor, int] | None:
        """(cu_seqlens of the whole batch, longest document) of document-packed parameters, checked; else None."""
        if packed_seq_params is None:
            return None
        if not is_document_packed(packed_seq_params):
            raise NotImplementedError("ContextParallelAttention: packed_seq_params must be document-packed (qkv_format "
                                      "'sbhd' with cu_seqlens): build them with document_packed_seq_params")
        cp = self.cp_group.size()
        if context_parallel_size(packed_seq_params) != cp:
            raise ValueError(f"ContextParallelAttention: packed_seq_params describe sequences split over "
                             f"{context_parallel_size(packed_seq_params)} CP ranks, this CP group has {cp}: build them "
                             "from the whole batch's position ids with document_packed_seq_params(position_ids, "
                             "cp_group) before get_batch_on_this_cp_rank")
        cu = check_document_packed(packed_seq_params, b, s * cp)
        return cu, packed_seq_params.max_seqlen_q
