"""Model families as data: HuggingFace ``config.json`` <-> :class:`ModelConfig` <-> megatron-core config.

Adding a family means adding a :class:`FamilySpec` row to :data:`FAMILIES` (and, if its tensor names
differ, a mapping table in :mod:`mindspeed_llm.convert.mapping`); see docs/adding_a_model.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from mindspeed_llm.models.names import MODEL_TYPE_HF_CHOICES


class UnsupportedModelError(ValueError):
    """The HF config describes something our megatron-core model cannot represent."""


@dataclass(frozen=True)
class FamilySpec:
    """What distinguishes one HF architecture from another, as data."""

    architecture: str  # HF ``architectures[0]``
    model_type: str  # HF ``model_type``
    qkv_bias: bool  # q/k/v projections carry biases (Qwen2) or not
    aliases: tuple[str, ...]  # accepted values of ``--model-type-hf``
    # HF config keys this family has beyond COMMON_KEYS; each is checked (see ``from_hf_config``) and kept
    # verbatim for the round trip.
    passthrough_keys: tuple[str, ...] = ()
    qk_layernorm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    # How HF decides which layers use the sliding window: "always" (Mistral: every layer when
    # ``sliding_window`` is set), "use_sliding_window" (Qwen2/3: that flag, from layer ``max_window_layers``
    # on), or None (no sliding window in this family).
    sliding_window: str | None = None
    # Mixture of experts: how config.json spells the experts ("qwen": num_experts, moe_intermediate_size,
    # norm_topk_prob, decoder_sparse_step, mlp_only_layers [, shared_expert_intermediate_size];
    # "mixtral": num_local_experts, experts of intermediate_size, renormalised top-k), None: dense.
    moe: str | None = None
    shared_expert: bool = False  # a gated shared expert beside the routed ones (Qwen2-MoE)


_QWEN_WINDOW_KEYS = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")

FAMILIES: dict[str, FamilySpec] = {
    "Qwen2ForCausalLM": FamilySpec(
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        qkv_bias=True,
        aliases=("qwen2", "qwen25", "qwen2.5", "llama2"),
        passthrough_keys=_QWEN_WINDOW_KEYS,
        sliding_window="use_sliding_window",
    ),
    "Qwen3ForCausalLM": FamilySpec(
        architecture="Qwen3ForCausalLM",
        model_type="qwen3",
        qkv_bias=False,
        aliases=("qwen3",),
        passthrough_keys=("attention_bias", *_QWEN_WINDOW_KEYS),
        qk_layernorm=True,
        sliding_window="use_sliding_window",
    ),
    "LlamaForCausalLM": FamilySpec(
        architecture="LlamaForCausalLM",
        model_type="llama",
        qkv_bias=False,
        aliases=("llama", "llama2", "llama3", "llama31"),
        passthrough_keys=("pretraining_tp", "attention_bias", "mlp_bias"),
    ),
    "Qwen3MoeForCausalLM": FamilySpec(
        architecture="Qwen3MoeForCausalLM",
        model_type="qwen3_moe",
        qkv_bias=False,
        aliases=("qwen3-moe", "qwen3_moe"),
        passthrough_keys=("attention_bias", *_QWEN_WINDOW_KEYS, "output_router_logits",
                          "router_aux_loss_coef"),
        qk_layernorm=True,
        sliding_window="use_sliding_window",
        moe="qwen",
    ),
    "Qwen2MoeForCausalLM": FamilySpec(
        architecture="Qwen2MoeForCausalLM",
        model_type="qwen2_moe",
        qkv_bias=True,
        aliases=("qwen2-moe", "qwen2_moe", "qwen15-moe"),
        passthrough_keys=("qkv_bias", *_QWEN_WINDOW_KEYS, "output_router_logits", "router_aux_loss_coef"),
        sliding_window="use_sliding_window",
        moe="qwen",
        shared_expert=True,
    ),
    "MixtralForCausalLM": FamilySpec(
        architecture="MixtralForCausalLM",
        model_type="mixtral",
        qkv_bias=False,
        aliases=("mixtral",),
        passthrough_keys=("sliding_window", "layer_types", "output_router_logits", "router_aux_loss_coef",
                          "router_jitter_noise"),
        sliding_window="always",
        moe="mixtral",
    ),
    "MistralForCausalLM": FamilySpec(
        architecture="MistralForCausalLM",
        model_type="mistral",
        qkv_bias=False,
        aliases=("mistral", "llama2"),
        passthrough_keys=("sliding_window", "layer_types"),
        sliding_window="always",
    ),
}

# Keys every family reads into ModelConfig (docs/adding_a_model.md has the table of what each becomes).
COMMON_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "hidden_act",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "partial_rotary_factor",
        "tie_word_embeddings",
        "torch_dtype",
        "dtype",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    }
)
# Keys that never change the model's output: transformers' and the hub's bookkeeping, generation defaults.
# ``pretraining_tp`` > 1 only slices Llama's matmuls in old transformers (the same math).
COSMETIC_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "name_or_path",
        "use_cache",
        "initializer_range",
        "id2label",
        "label2id",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "tokenizer_class",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "pruned_heads",
        "finetuning_task",
        "task_specific_params",
        "cross_attention_hidden_size",
        "add_cross_attention",
        "is_decoder",
        "prefix",
        "sep_token_id",
        "decoder_start_token_id",
        "bad_words_ids",
        "num_return_sequences",
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "typical_p",
        "diversity_penalty",
        "num_beam_groups",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "encoder_no_repeat_ngram_size",
        "tie_encoder_decoder",
        "pretraining_tp",
    }
)
# Sub-keys of rope_scaling / rope_parameters each supported RoPE type takes (rope_theta read separately).
ROPE_TYPE_KEYS = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset(
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    ),
}

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(value: Any) -> torch.dtype:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16`` (and fp16, fp32)."""
    if isinstance(value, torch.dtype):
        return value
    name = str(value).replace("torch.", "").lower()
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {value!r}: use one of fp32, bf16, fp16")
    return _DTYPE_NAMES[name]


def dtype_hf_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling HF configs use)."""
    return str(dtype).replace("torch.", "")


def family_for(architecture: str) -> FamilySpec:
    """The :class:`FamilySpec` for an HF architecture name, or a clear error."""
    if architecture not in FAMILIES:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; supported: {', '.join(FAMILIES)} "
            "(add a FamilySpec row in mindspeed_llm/models/families.py, see docs/adding_a_model.md)"
        )
    return FAMILIES[architecture]


_REQUIRED_POSITIVE_INTS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                           "vocab_size")
_OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
_OPTIONAL_NUMBERS = ("rms_norm_eps", "rope_theta")


def check_hf_config_values(cfg: dict) -> None:
    """Sizes must be positive integers and numbers numbers (a damaged config.json is one ValueError)."""
    for key in _REQUIRED_POSITIVE_INTS:
        if key not in cfg:
            raise KeyError(key)
    for key in _REQUIRED_POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
        value = cfg.get(key)
        if value is None and key in _OPTIONAL_POSITIVE_INTS:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} is {json.dumps(value)}, expected a positive integer")
    for key in _OPTIONAL_NUMBERS:
        if key in cfg and (
            isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] <= 0
        ):
            raise ValueError(f"{key} is {json.dumps(cfg[key])}, expected a positive number")
    heads, groups = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % groups:
        raise ValueError(f"num_key_value_heads={groups} does not divide num_attention_heads={heads}")
    if not cfg.get("head_dim") and cfg["hidden_size"] % heads:
        raise ValueError(f"num_attention_heads={heads} does not divide hidden_size={cfg['hidden_size']}")
# Megatron/MindSpeed RoPE scaling flags (argument names) and the HF ``rope_scaling`` keys they set.
ROPE_SCALING_FLAGS = (("rope_scaling_type", "rope_type"), ("rope_scaling_factor", "factor"),
                      ("low_freq_factor", "low_freq_factor"), ("high_freq_factor", "high_freq_factor"),
                      ("original_max_position_embeddings", "original_max_position_embeddings"))


def rope_scaling_to_flags(rope_scaling: dict | None) -> dict:
    """The RoPE scaling flags' values for an HF-form ``rope_scaling`` (all None without scaling)."""
    scaling = rope_scaling or {}
    return {attr: scaling.get(key) for attr, key in ROPE_SCALING_FLAGS}


def _read_rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope base, scaling dict or None) from transformers-4 or transformers-5 keys; refuses what we cannot
    run."""
    params = cfg.get("rope_parameters") or {}
    base = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    partial = (scaling or {}).get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise UnsupportedModelError(
            f"partial_rotary_factor={partial} is not supported (RoPE on part of each head): only 1.0")
    if scaling:
        scaling = {k: v for k, v in scaling.items() if k not in ("partial_rotary_factor", "rope_theta")}
        kind = scaling.pop("rope_type", scaling.pop("type", "default"))
        scaling.pop("type", None)
        if kind not in ROPE_TYPE_KEYS:
            raise UnsupportedModelError(
                f"rope_scaling rope_type={kind!r} is not supported: only default, linear and llama3 are "
                "implemented (yarn, dynamic, longrope are refused rather than run with other frequencies)")
        unknown = sorted(set(scaling) - ROPE_TYPE_KEYS[kind])
        if unknown:
            raise UnsupportedModelError(
                f"rope_scaling {unknown[0]}={scaling[unknown[0]]!r} is not supported for rope_type {kind!r} "
                f"(understood: {', '.join(sorted(ROPE_TYPE_KEYS[kind])) or 'nothing'})")
        if kind != "default" and scaling.get("factor") is None:
            raise UnsupportedModelError(
                f"rope_scaling rope_type={kind!r} has no factor: add rope_scaling.factor"
            )
        scaling = {"rope_type": kind, **scaling} if kind != "default" else None
    return float(base), (scaling or None)


# The MoE keys of config.json each kind of family reads (into ModelConfig's moe_* fields, written back by
# to_hf_config).
MOE_KEYS = {
    "qwen": frozenset({"num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
                       "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers"}),
    "mixtral": frozenset({"num_local_experts", "num_experts_per_tok"}),
}


def _positive_int(cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} is {json.dumps(value)}, expected a positive integer")
    return value


def _read_moe(cfg: dict, fam: FamilySpec) -> dict:
    """ModelConfig's expert fields from config.json (nothing for a dense family); refuses what we cannot
    run."""
    if fam.moe is None:
        return {}
    if "num_experts" in cfg and "num_local_experts" in cfg and cfg["num_experts"] != cfg["num_local_experts"]:
        raise UnsupportedModelError(
            f"num_experts={cfg['num_experts']} and num_local_experts={cfg['num_local_experts']} contradict "
            "each other: keep one")
    key = "num_experts" if "num_experts" in cfg else "num_local_experts"
    experts = _positive_int(cfg, key)
    topk = _positive_int(cfg, "num_experts_per_tok")
    if topk > experts:
        raise ValueError(f"num_experts_per_tok={topk} is larger than {key}={experts}")
    layers = int(cfg["num_hidden_layers"])
    if fam.moe == "mixtral":
        jitter = cfg.get("router_jitter_noise") or 0.0
        if jitter:
            raise UnsupportedModelError(
                f"router_jitter_noise={jitter} is not supported (transformers multiplies the router input by "
                "random noise while training; megatron-core's router has no such noise): set it to 0.0")
        return dict(num_experts=experts, moe_router_topk=topk,
                    moe_ffn_hidden_size=int(cfg["intermediate_size"]), moe_router_pre_softmax=False,
                    moe_layer_freq=(1,) * layers)
    step = cfg.get("decoder_sparse_step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"decoder_sparse_step is {json.dumps(step)}, expected a positive integer")
    dense = cfg.get("mlp_only_layers") or []
    if not isinstance(dense, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense):
        raise ValueError(f"mlp_only_layers is {json.dumps(dense)}, expected a list of layer numbers")
    out_of_range = [i for i in dense if not 0 <= i < layers]
    if out_of_range:
        raise ValueError(
            f"mlp_only_layers holds {out_of_range[0]}, not a layer of num_hidden_layers={layers}"
        )
    pattern = tuple(int(i not in dense and (i + 1) % step == 0) for i in range(layers))
    fields = dict(num_experts=experts, moe_router_topk=topk,
                  moe_ffn_hidden_size=_positive_int(cfg, "moe_intermediate_size"),
                  moe_router_pre_softmax=not bool(cfg.get("norm_topk_prob", False)), moe_layer_freq=pattern)
    if fam.shared_expert:
        fields.update(
            moe_shared_expert_intermediate_size=_positive_int(cfg, "shared_expert_intermediate_size"),
            moe_shared_expert_gate=True,
        )
    return fields


def _moe_hf_keys(model: ModelConfig, fam: FamilySpec) -> dict:
    """config.json's expert keys of a ModelConfig (the inverse of :func:`_read_moe`)."""
    if fam.moe is None or not model.num_experts:
        return {}
    if fam.moe == "mixtral":
        return {"num_local_experts": model.num_experts, "num_experts_per_tok": model.moe_router_topk}
    keys = {"num_experts": model.num_experts, "num_experts_per_tok": model.moe_router_topk,
            "moe_intermediate_size": model.moe_ffn_hidden_size,
            "norm_topk_prob": not model.moe_router_pre_softmax, "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i, moe in enumerate(model.moe_layers()) if not moe]}
    if fam.shared_expert:
        keys["shared_expert_intermediate_size"] = model.moe_shared_expert_intermediate_size
    return keys


def _check_keys(cfg: dict, fam: FamilySpec) -> None:
    """Refuse any key that is neither read by us, known to the family, nor cosmetic (it might change the
    math)."""
    known = COMMON_KEYS | COSMETIC_KEYS | set(fam.passthrough_keys) | MOE_KEYS.get(fam.moe, frozenset())
    if fam.shared_expert:
        known |= {"shared_expert_intermediate_size"}
    for key in cfg:
        if key not in known:
            raise UnsupportedModelError(
                f"config.json key {key}={cfg[key]!r} is not known for {fam.architecture}: it may change the "
                "model's math, so it is refused (remove it if it is cosmetic, or add it to the family in "
                "mindspeed_llm/models/families.py)")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported (only silu, i.e. SwiGLU)")
    if cfg.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=True is not supported (megatron's MLP here has no biases)")
    if fam.architecture == "Qwen2MoeForCausalLM" and cfg.get("qkv_bias") is False:
        raise UnsupportedModelError("qkv_bias=False is not supported for Qwen2MoeForCausalLM (its q/k/v "
                                    "projections carry biases in every released model)")
    if cfg.get("attention_bias"):
        raise UnsupportedModelError(
            f"attention_bias=True is not supported for {fam.architecture} (it also puts a bias on o_proj, "
            "which megatron's local attention cannot hold)")


def _active_sliding_window(cfg: dict, fam: FamilySpec) -> int | None:
    """The attention window of the layers that use one (HF's rules per family), or None when none does."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if types is not None:
        odd = sorted(set(types) - {"full_attention", "sliding_attention"})
        if odd:
            raise UnsupportedModelError(
                f"layer_types entry {odd[0]!r} is not supported (only full_attention, sliding_attention)"
            )
        uses = "sliding_attention" in types
    elif fam.sliding_window == "always":
        uses = True
    elif fam.sliding_window == "use_sliding_window":
        layers = int(cfg["num_hidden_layers"])
        uses = bool(cfg.get("use_sliding_window")) and int(cfg.get("max_window_layers") or 0) < layers
    else:
        uses = False
    if not uses or window is None:
        return None
    return int(window)


@dataclass
class ModelConfig:
    """One decoder-only model's architecture, independent of HF or Megatron spelling."""

    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    vocab_size: int  # rows of the HF embedding (may exceed the tokenizer's size)
    max_position_embeddings: int
    rotary_base: float = 10000.0
    rope_scaling: dict | None = None  # HF form, with "rope_type"
    norm_epsilon: float = 1e-6
    add_qkv_bias: bool = False
    qk_layernorm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    sliding_window: int | None = (
        None  # window of the layers that use one (HF), None: full attention everywhere
    )
    tie_word_embeddings: bool = False
    params_dtype: torch.dtype = torch.float32
    attention_dropout: float = 0.0
    bos_token_id: Any = None
    eos_token_id: Any = None
    pad_token_id: Any = None
    extra_hf: dict = field(default_factory=dict)  # family passthrough keys, written back by to_hf_config
    # Mixture of experts (num_experts None: a dense model).
    num_experts: int | None = None
    moe_router_topk: int | None = None
    moe_ffn_hidden_size: int | None = None
    moe_router_pre_softmax: bool = False  # top-k of the softmax over all experts, not renormalised
    moe_shared_expert_intermediate_size: int | None = None
    moe_shared_expert_gate: bool = False  # sigmoid gate on the shared expert's output
    moe_layer_freq: tuple[int, ...] | None = None  # 1: MoE layer, 0: dense, per layer; None: all MoE

    def moe_layers(self) -> tuple[int, ...]:
        """1 for each MoE layer, 0 for each dense layer (all 0 for a dense model)."""
        if not self.num_experts:
            return (0,) * self.num_layers
        return tuple(self.moe_layer_freq) if self.moe_layer_freq is not None else (1,) * self.num_layers

    # ---- HF side -------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict | str | os.PathLike) -> ModelConfig:
        """Read an HF ``config.json`` (a dict, the file, or its folder); transformers 4 and 5 keys."""
        if not isinstance(config, dict):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                try:
                    config = json.load(f)
                except (UnicodeDecodeError, ValueError) as exc:
                    raise ValueError(f"not valid JSON ({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(config, dict):
            raise ValueError(f"holds a JSON {type(config).__name__}, expected an object of model settings")
        check_hf_config_values(config)
        cfg = config
        archs = cfg.get("architectures") or []
        arch = archs[0] if archs else None
        if arch is None:
            by_type = {f.model_type: a for a, f in FAMILIES.items()}
            arch = by_type.get(cfg.get("model_type"))
            if arch is None:
                raise UnsupportedModelError(
                    f"config has no 'architectures' and model_type {cfg.get('model_type')!r} is not one of "
                    f"{', '.join(sorted(by_type))}"
                )
        fam = family_for(arch)
        _check_keys(cfg, fam)
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        kv_channels = cfg.get("head_dim") or hidden // heads
        base, scaling = _read_rope(cfg)
        dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return cls(
            architecture=arch,
            model_type=fam.model_type,
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(cfg["intermediate_size"]),
            num_attention_heads=heads,
            num_query_groups=int(cfg.get("num_key_value_heads") or heads),
            kv_channels=int(kv_channels),
            vocab_size=int(cfg["vocab_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            rotary_base=base,
            rope_scaling=scaling,
            norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
            add_qkv_bias=fam.qkv_bias,
            qk_layernorm=fam.qk_layernorm,
            sliding_window=_active_sliding_window(cfg, fam),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            params_dtype=parse_dtype(dtype),
            attention_dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"),
            extra_hf={k: cfg[k] for k in fam.passthrough_keys if k in cfg},
            **_read_moe(cfg, fam),
        )

    def to_hf_config(self) -> dict:
        """An HF ``config.json`` dict (hub / transformers-4 key names, which transformers 5 also reads)."""
        cfg: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_query_groups,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_epsilon,
            "rope_theta": self.rotary_base,
            "rope_scaling": copy.deepcopy(self.rope_scaling),
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": dtype_hf_name(self.params_dtype),
            "vocab_size": self.vocab_size,
            "attention_dropout": self.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.pad_token_id is not None:
            cfg["pad_token_id"] = self.pad_token_id
        # Qwen3's transformers default head_dim is 128, not hidden / heads: always write it there.
        if self.kv_channels != self.hidden_size // self.num_attention_heads or self.qk_layernorm:
            cfg["head_dim"] = self.kv_channels
        cfg.update(_moe_hf_keys(self, FAMILIES[self.architecture]) if self.architecture in FAMILIES else {})
        cfg.update(copy.deepcopy(self.extra_hf))
        return cfg

    # ---- Megatron side -------------------------------------------------------------------------
    def rope_kwargs(self) -> dict:
        """GPTModel keyword arguments for RoPE; rejects scalings megatron-core cannot represent."""
        kwargs: dict[str, Any] = {"position_embedding_type": "rope", "rotary_base": self.rotary_base}
        s = self.rope_scaling
        if not s:
            return kwargs
        kind = s.get("rope_type")
        if kind == "llama3":
            kwargs.update(rope_scaling=True, rope_scaling_factor=float(s["factor"]))
        elif kind == "linear":
            kwargs["seq_len_interpolation_factor"] = float(s["factor"])
        else:
            raise UnsupportedModelError(
                f"rope_scaling type {kind!r} is not supported by megatron-core's RotaryEmbedding "
                "(supported: default, linear, llama3)"
            )
        return kwargs

    def llama3_inv_freq(self) -> torch.Tensor | None:
        """Llama-3.x RoPE inverse frequencies when the scaling uses non-default parameters, else None.

        megatron-core 0.16.1 applies llama3 scaling with ``low_freq_factor=1``, ``high_freq_factor=4``,
        ``original_max_position_embeddings=8192`` fixed; other values are applied by the builder.
        """
        s = self.rope_scaling
        if not s or s.get("rope_type") != "llama3":
            return None
        low = float(s.get("low_freq_factor", 1.0))
        high = float(s.get("high_freq_factor", 4.0))
        orig = int(s.get("original_max_position_embeddings", 8192))
        if (low, high, orig) == (1.0, 4.0, 8192):
            return None
        dim = self.kv_channels
        inv = 1.0 / (self.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        factor = float(s["factor"])
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = orig / low, orig / high
        scaled = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return torch.where(medium, smoothed, scaled)

    def transformer_config_kwargs(self) -> dict:
        """The architecture part of megatron-core's ``TransformerConfig`` keyword arguments."""
        return dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.kv_channels,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=True,
            activation_func=torch.nn.functional.silu,
            add_bias_linear=False,
            add_qkv_bias=self.add_qkv_bias,
            qk_layernorm=self.qk_layernorm,
            hidden_dropout=0.0,
            attention_dropout=self.attention_dropout,
            params_dtype=self.params_dtype,
            pipeline_dtype=self.params_dtype,
            bf16=self.params_dtype == torch.bfloat16,
            fp16=self.params_dtype == torch.float16,
            **self.moe_transformer_config_kwargs(),
        )

    def moe_transformer_config_kwargs(self) -> dict:
        """megatron-core's MoE fields of ``TransformerConfig`` (none for a dense model)."""
        if not self.num_experts:
            return {}
        return dict(
            num_moe_experts=self.num_experts,
            moe_router_topk=self.moe_router_topk,
            moe_ffn_hidden_size=self.moe_ffn_hidden_size,
            moe_router_pre_softmax=self.moe_router_pre_softmax,
            moe_shared_expert_intermediate_size=self.moe_shared_expert_intermediate_size,
            moe_shared_expert_gate=self.moe_shared_expert_gate,
            moe_layer_freq=list(self.moe_layers()),
        )

    def check_sequence_length(self, length: int, what: str) -> None:
        """Refuse sequences longer than an active sliding window (megatron's local attention has none)."""
        if self.sliding_window is not None and length > self.sliding_window:
            raise UnsupportedModelError(
                f"config.json sliding_window={self.sliding_window} is active for {self.architecture} and "
                f"{what} {length} is longer: megatron-core's local attention has no sliding window, so use "
                f"{what} <= {self.sliding_window}")

    def to_transformer_config(self, **overrides: Any):
        """megatron-core ``TransformerConfig`` for this model; ``overrides`` win (parallel sizes, dtype,
        ...)."""
        from megatron.core.transformer import TransformerConfig

        kwargs = self.transformer_config_kwargs()
        kwargs.update(overrides)
        if "params_dtype" in overrides and "pipeline_dtype" not in overrides:
            kwargs["pipeline_dtype"] = overrides["params_dtype"]
        if "params_dtype" in overrides and "bf16" not in overrides and "fp16" not in overrides:
            kwargs["bf16"] = overrides["params_dtype"] == torch.bfloat16
            kwargs["fp16"] = overrides["params_dtype"] == torch.float16
        return TransformerConfig(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def pipeline_layout(num_layer_list: list[int] | None) -> list[list[str]] | None:
    """megatron-core ``pipeline_model_parallel_layout`` for an uneven ``--num-layer-list`` (None if even)."""
    if not num_layer_list:
        return None
    if len(set(num_layer_list)) == 1:
        return None
    layout = [["decoder"] * n for n in num_layer_list]
    layout[0].insert(0, "embedding")
    layout[-1].append("loss")
    return layout


def check_model_type_hf(model_type_hf: str | None, model: ModelConfig) -> None:
    """Raise if ``--model-type-hf`` contradicts the architecture read from config.json."""
    if model_type_hf is None:
        return
    value = model_type_hf.lower()
    if value not in MODEL_TYPE_HF_CHOICES:
        raise UnsupportedModelError(
            f"--model-type-hf {model_type_hf!r} is not supported: use one of "
            f"{', '.join(MODEL_TYPE_HF_CHOICES)}"
        )
    fam = family_for(model.architecture)
    if value not in fam.aliases:
        raise UnsupportedModelError(
            f"--model-type-hf {model_type_hf} contradicts config.json's architecture {model.architecture}: "
            f"use one of {', '.join(fam.aliases)}"
        )
