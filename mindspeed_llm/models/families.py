"""Model families as data: HuggingFace ``config.json`` <-> :class:`ModelConfig` <-> megatron-core config.

Adding a family means adding a :class:`FamilySpec` row to :data:`FAMILIES` (and, if its tensor names
differ, a mapping table in :mod:`mindspeed_llm.checkpoint.mapping`); see docs/adding_a_model.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch


class UnsupportedModelError(ValueError):
    """The HF config describes something our megatron-core model cannot represent."""


@dataclass(frozen=True)
class FamilySpec:
    """What distinguishes one HF architecture from another, as data."""

    architecture: str  # HF ``architectures[0]``
    model_type: str  # HF ``model_type``
    qkv_bias: str  # "always" (Qwen2), or "attention_bias" (read that config key; Llama)
    aliases: tuple[str, ...]  # accepted values of ``--model-type-hf``
    # HF config keys we understand but do not map onto megatron-core; kept verbatim for the round trip.
    passthrough_keys: tuple[str, ...] = ()


FAMILIES: dict[str, FamilySpec] = {
    "Qwen2ForCausalLM": FamilySpec(
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        qkv_bias="always",
        aliases=("qwen2", "qwen25", "qwen2.5", "llama2"),
        passthrough_keys=("use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout"),
    ),
    "LlamaForCausalLM": FamilySpec(
        architecture="LlamaForCausalLM",
        model_type="llama",
        qkv_bias="attention_bias",
        aliases=("llama", "llama2", "llama3", "llama31"),
        passthrough_keys=("pretraining_tp", "attention_dropout", "mlp_bias"),
    ),
    "MistralForCausalLM": FamilySpec(
        architecture="MistralForCausalLM",
        model_type="mistral",
        qkv_bias="never",
        aliases=("mistral", "llama2"),
        passthrough_keys=("sliding_window", "attention_dropout"),
    ),
}

# ``--model-type-hf`` values MindSpeed users pass. ``llama2`` is MindSpeed's catch-all for this family
# of decoder-only RMSNorm/SwiGLU/RoPE models, Qwen2 included (with ``--add-qkv-bias``).
MODEL_TYPE_HF_CHOICES = ("llama2", "llama3", "llama", "qwen2", "qwen25", "qwen2.5", "mistral")

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


def _read_rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope base, scaling dict or None) from transformers-4 or transformers-5 keys."""
    params = cfg.get("rope_parameters") or {}
    base = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        scaling = dict(scaling)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scaling["rope_type"] = kind
        scaling.pop("type", None)
        if kind == "default":
            scaling = None
    return float(base), (scaling or None)


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
    tie_word_embeddings: bool = False
    params_dtype: torch.dtype = torch.float32
    attention_dropout: float = 0.0
    bos_token_id: Any = None
    eos_token_id: Any = None
    pad_token_id: Any = None
    extra_hf: dict = field(default_factory=dict)  # family passthrough keys, written back by to_hf_config

    # ---- HF side -------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict | str | os.PathLike) -> ModelConfig:
        """Read an HF ``config.json`` (a dict, the file, or its folder); transformers 4 and 5 keys."""
        if not isinstance(config, dict):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
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
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only silu / SwiGLU)")
        if cfg.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias=true is not supported (megatron linear layers are bias-free here)")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        kv_channels = cfg.get("head_dim") or hidden // heads
        if fam.qkv_bias == "always":
            qkv_bias = True
        elif fam.qkv_bias == "attention_bias":
            qkv_bias = bool(cfg.get("attention_bias", False))
        else:
            qkv_bias = False
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
            add_qkv_bias=qkv_bias,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            params_dtype=parse_dtype(dtype),
            attention_dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"),
            extra_hf={k: cfg[k] for k in fam.passthrough_keys if k in cfg},
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
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.pad_token_id is not None:
            cfg["pad_token_id"] = self.pad_token_id
        if self.kv_channels != self.hidden_size // self.num_attention_heads:
            cfg["head_dim"] = self.kv_channels
        if family_for(self.architecture).qkv_bias == "attention_bias":
            cfg["attention_bias"] = self.add_qkv_bias
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
            hidden_dropout=0.0,
            attention_dropout=self.attention_dropout,
            params_dtype=self.params_dtype,
            pipeline_dtype=self.params_dtype,
            bf16=self.params_dtype == torch.bfloat16,
            fp16=self.params_dtype == torch.float16,
        )

    def to_transformer_config(self, **overrides: Any):
        """megatron-core ``TransformerConfig`` for this model; ``overrides`` win (parallel sizes, dtype, ...)."""
        from megatron.core.transformer import TransformerConfig

        sw = self.extra_hf.get("sliding_window")
        if sw and self.extra_hf.get("use_sliding_window", self.model_type == "mistral") and \
                sw < self.max_position_embeddings:
            warnings.warn(
                f"{self.architecture}: sliding_window={sw} is not applied by megatron-core's local attention; "
                f"results match HF only for sequences up to {sw} tokens",
                stacklevel=2,
            )
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
            f"--model-type-hf {model_type_hf!r} is not supported: use one of {', '.join(MODEL_TYPE_HF_CHOICES)}"
        )
    fam = family_for(model.architecture)
    if value not in fam.aliases:
        raise UnsupportedModelError(
            f"--model-type-hf {model_type_hf} contradicts config.json's architecture {model.architecture}: "
            f"use one of {', '.join(fam.aliases)}"
        )
