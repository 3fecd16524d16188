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


@dataclass(frozen=True)
class TensorMapping:
    """One mcore tensor and the HF tensors it is made from. ``{i}`` in HF names is the global layer."""

    mcore: str
    hf: tuple[str, ...]
    transform: Transform
    split: Split
    when: str | None = None  # "qkv_bias", "qk_layernorm", "untied", "shared_expert"; None = always
    # An expert's row: ``{e}`` in HF names is the global expert, in the mcore name the EP rank's local one.
    expert: bool = False


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
ATTENTION = LLAMA_LIKE_LAYER[:-3]
MOE_PRE_MLP_NORM = LLAMA_LIKE_LAYER[-3]


def _moe_layer(router: str, gate: str, up: str, down: str) -> tuple[TensorMapping, ...]:
    """The MLP rows of an MoE layer: the router, the routed experts (one row each, sequential layout), the
    shared expert and its sigmoid gate (Qwen2-MoE)."""
    layer = "model.layers.{i}.mlp"
    return (
        TensorMapping("mlp.router.weight", (router,), Transform.COPY, Split.REPLICATED),
        TensorMapping("mlp.experts.local_experts.{e}.linear_fc1.weight", (gate, up), Transform.GATE_UP,
                      Split.GATE_UP, expert=True),
        TensorMapping("mlp.experts.local_experts.{e}.linear_fc2.weight", (down,), Transform.COPY, Split.ROW,
                      expert=True),
        TensorMapping("mlp.shared_experts.linear_fc1.weight",
                      (f"{layer}.shared_expert.gate_proj.weight", f"{layer}.shared_expert.up_proj.weight"),
                      Transform.GATE_UP, Split.GATE_UP, when="shared_expert"),
        TensorMapping("mlp.shared_experts.linear_fc2.weight", (f"{layer}.shared_expert.down_proj.weight",),
                      Transform.COPY, Split.ROW, when="shared_expert"),
        TensorMapping("mlp.shared_experts.gate_weight", (f"{layer}.shared_expert_gate.weight",),
                      Transform.COPY, Split.REPLICATED, when="shared_expert"),
    )


# The MoE layers of each naming (FamilySpec.moe): the hub's per-expert tensors.
MOE_LAYER = {
    "qwen": _moe_layer("model.layers.{i}.mlp.gate.weight",
                       "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
                       "model.layers.{i}.mlp.experts.{e}.up_proj.weight",
                       "model.layers.{i}.mlp.experts.{e}.down_proj.weight"),
    "mixtral": _moe_layer("model.layers.{i}.block_sparse_moe.gate.weight",
                          "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                          "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
                          "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight"),
}
# How transformers 5 may save the experts instead (``save_pretrained(save_original_format=False)``): one
# [experts, 2 x ffn, hidden] tensor of [gate; up] per expert and one [experts, hidden, ffn] down tensor
# per layer, the router under ``mlp.gate`` for every family.
FUSED_GATE_UP = "model.layers.{i}.mlp.experts.gate_up_proj"
FUSED_DOWN = "model.layers.{i}.mlp.experts.down_proj"
FUSED_ROUTER = "model.layers.{i}.mlp.gate.weight"
# megatron-core's grouped expert weights (GroupedMLP, --moe-grouped-gemm): per EP and TP rank,
# weight1 holds [local experts, hidden, 2 x ffn / TP] and weight2 [local experts, ffn / TP, hidden], as
# [hidden, E x 2 x ffn / TP] and [E x ffn / TP, hidden] views of that memory.
GROUPED_FC1 = "mlp.experts.weight1"
GROUPED_FC2 = "mlp.experts.weight2"

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


def moe_naming(cfg: ModelConfig) -> str | None:
    """The family's MoE naming (a key of :data:`MOE_LAYER`), None for a dense model."""
    if not cfg.num_experts:
        return None
    from mindspeed_llm.models.families import family_for

    return family_for(cfg.architecture).moe or "qwen"


def is_moe_layer(cfg: ModelConfig, layer: int) -> bool:
    """True when global ``layer`` holds experts."""
    return bool(cfg.num_experts) and bool(cfg.moe_layers()[layer])


def layer_mappings(cfg: ModelConfig, layer: int | None = None) -> list[TensorMapping]:
    """The per-layer rows that apply to this model (of global ``layer``: a dense or an MoE layer; None: every
    row any layer of the model has)."""
    enabled = {None, "qkv_bias" if cfg.add_qkv_bias else None, "qk_layernorm" if cfg.qk_layernorm else None,
               "shared_expert" if cfg.moe_shared_expert_intermediate_size else None}
    naming = moe_naming(cfg)
    if naming is None:
        rows = LLAMA_LIKE_LAYER
    elif layer is None:
        rows = (*LLAMA_LIKE_LAYER, *MOE_LAYER[naming])
    elif is_moe_layer(cfg, layer):
        rows = (*ATTENTION, MOE_PRE_MLP_NORM, *MOE_LAYER[naming])
    else:
        rows = LLAMA_LIKE_LAYER
    return [m for m in rows if m.when in enabled]


def hf_names_for_layer(cfg: ModelConfig, layer: int, fused: bool = False) -> list[str]:
    """All HF tensor names of one decoder layer (``fused``: transformers 5's fused expert tensors)."""
    names = []
    for m in layer_mappings(cfg, layer):
        if m.expert:
            if fused:
                fused_name = FUSED_GATE_UP if m.transform is Transform.GATE_UP else FUSED_DOWN
                names.append(fused_name.format(i=layer))
            else:
                names += [n.format(i=layer, e=e) for e in range(cfg.num_experts) for n in m.hf]
        elif fused and m.mcore == "mlp.router.weight":
            names.append(FUSED_ROUTER.format(i=layer))
        else:
            names += [n.format(i=layer) for n in m.hf]
    return names


def layer_extra_states(cfg: ModelConfig, layer: int, local_experts: int, grouped: bool) -> list[str]:
    """The ``_extra_state`` entries megatron-core's local spec keeps for one layer (None values)."""
    if not is_moe_layer(cfg, layer):
        return list(LAYER_EXTRA_STATES)
    extras = list(LAYER_EXTRA_STATES[:2])
    if not grouped:
        extras += [f"mlp.experts.local_experts.{j}.{fc}._extra_state" for j in range(local_experts)
                   for fc in ("linear_fc1", "linear_fc2")]
    if cfg.moe_shared_expert_intermediate_size:
        extras += ["mlp.shared_experts.linear_fc1._extra_state", "mlp.shared_experts.linear_fc2._extra_state"]
    return extras


def expected_hf_names(cfg: ModelConfig, fused: bool = False) -> list[str]:
    """Every HF tensor name the model must have."""
    names = [EMBEDDING.hf[0], FINAL_NORM.hf[0]]
    if not cfg.tie_word_embeddings:
        names.append(OUTPUT_LAYER.hf[0])
    for i in range(cfg.num_layers):
        names += hf_names_for_layer(cfg, i, fused)
    return names


# ---- grouped experts (--moe-grouped-gemm) <-> one tensor per local expert --------------------------------
def group_experts(fc1: list[torch.Tensor], fc2: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One TP rank's local experts' fc1 [2f, h] and fc2 [h, f] -> GroupedMLP's weight1, weight2."""
    hidden = fc1[0].shape[1]
    weight1 = torch.stack([w.t() for w in fc1]).reshape(hidden, -1)
    weight2 = torch.stack([w.t() for w in fc2]).reshape(-1, hidden)
    return weight1.contiguous(), weight2.contiguous()


def ungroup_expert(weight: torch.Tensor, local_experts: int, hidden: int, j: int, fc1: bool) -> torch.Tensor:
    """Local expert ``j``'s fc1 [2f, h] (``fc1``) or fc2 [h, f] from a GroupedMLP weight1 / weight2."""
    if fc1:
        return weight.reshape(local_experts, hidden, -1)[j].t().contiguous()
    return weight.reshape(local_experts, -1, hidden)[j].t().contiguous()


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
    return torch.cat(tensors, dim=0)


def mcore_to_hf(m: TensorMapping, full: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Inverse of :func:`hf_to_mcore`."""
    if m.transform is Transform.COPY:
        return [full]
    if m.transform is Transform.QKV:
        return list(qkv_deinterleave(full, cfg))
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
