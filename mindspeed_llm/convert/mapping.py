"""HF tensor names <-> megatron-core (local spec) names, with typed transforms, as data.

A :class:`TensorMapping` row says which HF tensors make one mcore tensor, how they are combined
(``Transform``) and how the result is split over tensor-parallel ranks (``Split``). All tensor maths of
the converter lives in the small functions of this module, so they can be tested on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from mindspeed_llm.models.families import ModelConfig
from mindspeed_llm.models.tp_split import Split, shard, unshard  # noqa: F401 - the converter splits with them


class Transform(Enum):
    COPY = "copy"  # one HF tensor, same values
    QKV = "qkv"  # q, k, v -> interleaved per query group: [q heads of group g, k_g, v_g] for each g
    GATE_UP = "gate_up"  # gate, up -> [gate; up]
    FUSED_QKV = "fused_qkv"  # one [q; k; v] tensor (Phi-3's qkv_proj) -> interleaved per query group


@dataclass(frozen=True)
class TensorMapping:
    """One mcore tensor and the HF tensors it is made from. ``{i}`` in HF names is the global layer."""

    mcore: str
    hf: tuple[str, ...]
    transform: Transform
    split: Split
    when: str | None = None  # "qkv_bias", "qk_layernorm", "untied"; None = always


# Llama-style naming, shared by Qwen2, Qwen3, Llama and Mistral (Qwen3 adds the per-head q/k norms).
LLAMA_LIKE_LAYER: tuple[TensorMapping, ...] = (
    TensorMapping("input_layernorm.weight", ("model.layers.{i}.input_layernorm.weight",),
                  Transform.COPY, Split.REPLICATED),
    TensorMapping("self_attention.linear_qkv.weight",
                  ("model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight",
                   "model.layers.{i}.self_attn.v_proj.weight"),
                  Transform.QKV, Split.COLUMN),
    TensorMapping("self_attention.linear_qkv.bias",
                  ("model.layers.{i}.self_attn.q_proj.bias", "model.layers.{i}.self_attn.k_proj.bias",
                   "model.layers.{i}.self_attn.v_proj.bias"),
                  Transform.QKV, Split.COLUMN, when="qkv_bias"),
    TensorMapping("self_attention.q_layernorm.weight", ("model.layers.{i}.self_attn.q_norm.weight",),
                  Transform.COPY, Split.REPLICATED, when="qk_layernorm"),
    TensorMapping("self_attention.k_layernorm.weight", ("model.layers.{i}.self_attn.k_norm.weight",),
                  Transform.COPY, Split.REPLICATED, when="qk_layernorm"),
    TensorMapping("self_attention.linear_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",),
                  Transform.COPY, Split.ROW),
    TensorMapping("pre_mlp_layernorm.weight", ("model.layers.{i}.post_attention_layernorm.weight",),
                  Transform.COPY, Split.REPLICATED),
    TensorMapping("mlp.linear_fc1.weight",
                  ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
                  Transform.GATE_UP, Split.GATE_UP),
    TensorMapping("mlp.linear_fc2.weight", ("model.layers.{i}.mlp.down_proj.weight",),
                  Transform.COPY, Split.ROW),
)
# Phi-3: q/k/v in one qkv_proj ([q; k; v] rows), gate and up in one gate_up_proj ([gate; up] rows, megatron's
# own order at TP1, so a copy that Split.GATE_UP cuts per rank).
_PHI3_FUSED = {
    "self_attention.linear_qkv.weight": TensorMapping(
        "self_attention.linear_qkv.weight", ("model.layers.{i}.self_attn.qkv_proj.weight",),
        Transform.FUSED_QKV, Split.COLUMN),
    "mlp.linear_fc1.weight": TensorMapping(
        "mlp.linear_fc1.weight", ("model.layers.{i}.mlp.gate_up_proj.weight",), Transform.COPY,
        Split.GATE_UP),
}
PHI3_LAYER: tuple[TensorMapping, ...] = tuple(_PHI3_FUSED.get(m.mcore, m) for m in LLAMA_LIKE_LAYER)
# Families whose HF tensors are not named as Llama's.
LAYER_TABLES = {"Phi3ForCausalLM": PHI3_LAYER}

EMBEDDING = TensorMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
                          Transform.COPY, Split.VOCAB)
FINAL_NORM = TensorMapping("decoder.final_layernorm.weight", ("model.norm.weight",),
                           Transform.COPY, Split.REPLICATED)
OUTPUT_LAYER = TensorMapping("output_layer.weight", ("lm_head.weight",), Transform.COPY, Split.VOCAB,
                             when="untied")

# Local-spec modules whose state dict carries an ``_extra_state`` entry (None); kept for strict loading.
LAYER_EXTRA_STATES = ("self_attention.linear_proj._extra_state", "self_attention.linear_qkv._extra_state",
                      "mlp.linear_fc1._extra_state", "mlp.linear_fc2._extra_state")
OUTPUT_EXTRA_STATE = "output_layer._extra_state"


def layer_mappings(cfg: ModelConfig) -> list[TensorMapping]:
    """The per-layer rows that apply to this model."""
    enabled = {None, "qkv_bias" if cfg.add_qkv_bias else None, "qk_layernorm" if cfg.qk_layernorm else None}
    table = LAYER_TABLES.get(cfg.architecture, LLAMA_LIKE_LAYER)
    return [m for m in table if m.when in enabled]


def hf_names_for_layer(cfg: ModelConfig, layer: int) -> list[str]:
    """All HF tensor names of one decoder layer."""
    return [n.format(i=layer) for m in layer_mappings(cfg) for n in m.hf]


def expected_hf_names(cfg: ModelConfig) -> list[str]:
    """Every HF tensor name the model must have."""
    names = [EMBEDDING.hf[0], FINAL_NORM.hf[0]]
    if not cfg.tie_word_embeddings:
        names.append(OUTPUT_LAYER.hf[0])
    for i in range(cfg.num_layers):
        names += hf_names_for_layer(cfg, i)
    return names


# ---- transforms: HF tensors <-> one full (TP1) mcore tensor ------------------------------------------
def qkv_interleave(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """q/k/v projections (weight or bias) -> megatron's per-query-group interleaved ``linear_qkv``."""
    groups, d = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // groups
    rest = q.shape[1:]
    return torch.cat(
        [q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)],
        dim=1,
    ).reshape(-1, *rest)


def qkv_deinterleave(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`qkv_interleave`."""
    groups, d = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // groups
    rest = qkv.shape[1:]
    q, k, v = torch.split(qkv.reshape(groups, (per_group + 2) * d, *rest), [per_group * d, d, d], dim=1)
    return (q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(),
            v.reshape(-1, *rest).contiguous())


def hf_to_mcore(m: TensorMapping, tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """Combine the HF tensors of one row into the full (unsplit) mcore tensor."""
    if m.transform is Transform.COPY:
        return tensors[0]
    if m.transform is Transform.QKV:
        return qkv_interleave(*tensors, cfg)
    if m.transform is Transform.FUSED_QKV:
        q_rows, kv_rows = cfg.num_attention_heads * cfg.kv_channels, cfg.num_query_groups * cfg.kv_channels
        return qkv_interleave(*torch.split(tensors[0], [q_rows, kv_rows, kv_rows], dim=0), cfg)
    return torch.cat(tensors, dim=0)


def mcore_to_hf(m: TensorMapping, full: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Inverse of :func:`hf_to_mcore`."""
    if m.transform is Transform.COPY:
        return [full]
    if m.transform is Transform.QKV:
        return list(qkv_deinterleave(full, cfg))
    if m.transform is Transform.FUSED_QKV:
        return [torch.cat(qkv_deinterleave(full, cfg), dim=0)]
    gate, up = torch.chunk(full, 2, dim=0)
    return [gate.contiguous(), up.contiguous()]


# ---- vocabulary ---------------------------------------------------------------------------------------
def padded_vocab_size(rows: int, tp: int, divisible_by: int = 1, requested: int | None = None) -> int:
    """Vocabulary size after padding: ``requested``, or ``rows`` rounded up to ``divisible_by * tp``."""
    if requested is not None:
        return requested
    multiple = divisible_by * tp
    return int(math.ceil(rows / multiple) * multiple)


def pad_vocab(weight: torch.Tensor, padded: int) -> torch.Tensor:
    """Pad rows to ``padded`` by repeating the last row (as Megatron-LM does)."""
    rows = weight.shape[0]
    if padded == rows:
        return weight
    if padded < rows:
        raise ValueError(f"padded vocabulary {padded} is smaller than the {rows} embedding rows")
    return torch.cat([weight, weight[-1:].expand(padded - rows, *weight.shape[1:])], dim=0)


# ---- pipeline stages -----------------------------------------------------------------------------------
def layers_per_stage(num_layers: int, pp: int, num_layer_list: list[int] | None = None) -> list[int]:
    """Number of decoder layers on each pipeline stage (even, or ``num_layer_list``)."""
    if num_layer_list:
        return list(num_layer_list)
    return [num_layers // pp] * pp


def stage_layers(counts: list[int], pp_rank: int) -> range:
    """Global layer numbers held by one stage."""
    start = sum(counts[:pp_rank])
    return range(start, start + counts[pp_rank])
