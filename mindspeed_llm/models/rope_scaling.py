"""Long-context RoPE scalings: YaRN and LongRoPE, with transformers' semantics.

One home for what the two scalings mean: the HF ``rope_scaling`` / ``rope_parameters`` keys each takes,
their inverse frequencies and attention factor (transformers 5's ``_compute_yarn_parameters`` and
``_compute_longrope_parameters``, recomputed here: the tests compare against transformers itself), and
the rotary embedding that switches LongRoPE's short and long factors at the original window.

How megatron-core carries them: the inverse frequencies replace ``RotaryEmbedding.inv_freq`` (so every
consumer of megatron's RoPE table, the context-parallel split, packed documents and the KV cache of
inference, sees them), and the attention factor, which multiplies cos and sin, is the ``mscale`` that
megatron's attention passes to ``apply_rotary_pos_emb`` (``rope_attention_factor`` on the
``TransformerConfig``; :mod:`mindspeed_llm.patches.rope` makes megatron read it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
from torch import Tensor

# The HF keys each scaling takes besides rope_type (rope_theta and partial_rotary_factor are read apart).
YARN_KEYS = frozenset({"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
                       "mscale_all_dim", "attention_factor", "truncate"})
LONGROPE_KEYS = frozenset({"factor", "original_max_position_embeddings", "long_factor", "short_factor",
                           "attention_factor"})
LONG_CONTEXT_TYPES = ("yarn", "longrope")
# MindSpeed-LLM's flags (argument names) for them and the HF keys they set.
SCALING_FLAGS = (("rope_scaling_original_max_position_embeddings", "original_max_position_embeddings"),
                 ("rope_scaling_mscale", "mscale"), ("rope_scaling_mscale_all_dim", "mscale_all_dim"),
                 ("beta_fast", "beta_fast"), ("beta_slow", "beta_slow"),
                 ("long_factor", "long_factor"), ("short_factor", "short_factor"))
# Why the rest stays refused (one line each).
REFUSED_TYPES = {
    "dynamic": "dynamic NTK rescales the frequencies with each batch's length, so training on one length and "
               "generating at another would use other frequencies; it is refused rather than run inexactly",
}


def says_nothing(key: str, value, scaling: Mapping) -> bool:
    """Whether a launch's ``key=value`` for a YaRN ``scaling`` that lacks the key is transformers' own
    default (MindSpeed-LLM's scripts spell out ``--beta-fast 32 --beta-slow 1 --rope-scaling-mscale 1
    --rope-scaling-mscale-all-dim 0``): beta 32 / 1, a zero ``mscale_all_dim``, an ``mscale`` without one."""
    if key == "beta_fast":
        return float(value) == 32
    if key == "beta_slow":
        return float(value) == 1
    if key == "mscale_all_dim":
        return not value
    if key == "mscale":
        return not scaling.get("mscale_all_dim")
    return False


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inverse_frequencies(dim: int, base: float) -> Tensor:
    """Plain RoPE ``1 / base^(2i/d)`` in float32 (transformers' and megatron-core's arithmetic)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def scaling_factor(scaling: Mapping, max_position_embeddings: int) -> float:
    """``factor``, or (as transformers) the window ratio ``max_position_embeddings / original``."""
    factor = scaling.get("factor")
    if factor is None:
        return max_position_embeddings / scaling["original_max_position_embeddings"]
    return float(factor)


def yarn_inv_freq(scaling: Mapping, dim: int, base: float, max_position_embeddings: int) -> Tensor:
    """YaRN's inverse frequencies: interpolated below ``beta_slow`` rotations, kept above ``beta_fast``."""
    factor = scaling_factor(scaling, max_position_embeddings)
    original = scaling["original_max_position_embeddings"]
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: the original frequency (extrapolation), 0: divided by the factor
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def yarn_attention_factor(scaling: Mapping, max_position_embeddings: int) -> float:
    """``attention_factor``, else from ``mscale``/``mscale_all_dim`` (both set), else 0.1 ln(factor) + 1."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = scaling_factor(scaling, max_position_embeddings)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
    return _yarn_mscale(factor)


def longrope_inv_freq(scaling: Mapping, dim: int, base: float, long: bool) -> Tensor:
    """LongRoPE's inverse frequencies: each plain frequency divided by its short (or long) factor."""
    factors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
    return 1.0 / (factors * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def longrope_attention_factor(scaling: Mapping, max_position_embeddings: int) -> float:
    """``attention_factor``, else ``sqrt(1 + ln(factor) / ln(original))`` (1 without extension)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = scaling_factor(scaling, max_position_embeddings)
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(scaling["original_max_position_embeddings"]))


def attention_factor(scaling: Mapping | None, max_position_embeddings: int) -> float:
    """The factor on cos and sin of a scaling (1.0 for none, linear and llama3)."""
    kind = (scaling or {}).get("rope_type")
    if kind == "yarn":
        return yarn_attention_factor(scaling, max_position_embeddings)
    if kind == "longrope":
        return longrope_attention_factor(scaling, max_position_embeddings)
    return 1.0


def check_scaling(kind: str, scaling: dict, dim: int) -> None:
    """Refuse a YaRN / LongRoPE dict transformers would not run (ValueError naming the key)."""
    if not scaling.get("original_max_position_embeddings"):
        raise ValueError(f"rope_scaling rope_type={kind!r} needs original_max_position_embeddings")
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            values = scaling.get(key)
            if not isinstance(values, (list, tuple)) or len(values) != dim // 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"rope_scaling {key} must be a list of {dim // 2} numbers (head_dim / 2), "
                                 f"got {values!r}")
    elif "factor" not in scaling:  # transformers' required key (an explicit null: the windows' ratio)
        raise ValueError("rope_scaling rope_type='yarn' has no factor: add rope_scaling.factor")


def megatron_yarn_fields(factor: float, original: int, beta_fast: float | None = None,
                         beta_slow: float | None = None, mscale: float | None = None,
                         mscale_all_dim: float | None = None) -> dict:
    """The ``TransformerConfig`` attributes megatron-core's ``YarnRotaryEmbedding`` (``GPTModel`` with
    ``position_embedding_type="yarn"``) and its attention read, for a YaRN with transformers' meaning:
    beta 32/1 by default, the ramp's ends rounded, and the attention factor (``rope_attention_factor``)."""
    scaling = {"factor": factor, "original_max_position_embeddings": original, "beta_fast": beta_fast,
               "beta_slow": beta_slow, "mscale": mscale, "mscale_all_dim": mscale_all_dim}
    return {"yarn_rotary_scaling_factor": float(factor),
            "yarn_original_max_position_embeddings": int(original),
            "yarn_beta_fast": float(beta_fast or 32), "yarn_beta_slow": float(beta_slow or 1),
            "yarn_mscale": mscale, "yarn_mscale_all_dim": mscale_all_dim,
            "yarn_correction_range_round_to_int": True,
            "rope_attention_factor": yarn_attention_factor(scaling, original)}


def make_longrope_embedding(original, scaling: Mapping, dim: int, base: float):
    """A megatron ``RotaryEmbedding`` like ``original`` whose table uses LongRoPE's short factors for
    sequences up to the original window and its long factors beyond (transformers' switch on the
    longest position of a forward call).

    Generation sets ``sequence_length`` (the text's length at each step, transformers' ``seq_len``):
    megatron's KV-cache table spans the whole cache, so without it the table's end would decide."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    class LongRopeRotaryEmbedding(RotaryEmbedding):
        """megatron's RoPE table with LongRoPE's per-length choice of frequencies."""

        is_longrope = True
        sequence_length: int | None = None  # set by generation; None: the table's own end decides

        def uses_long_factors(self, max_seq_len: int, offset: int = 0) -> bool:
            length = self.sequence_length if self.sequence_length is not None else max_seq_len + offset
            return length > self.original_max_position_embeddings

        def get_freqs_non_repeated(self, max_seq_len: int, offset: int = 0) -> Tensor:
            long = self.uses_long_factors(max_seq_len, offset)
            inv = (self.long_inv_freq if long else self.short_inv_freq).to(self.inv_freq.device)
            seq = torch.arange(max_seq_len, device=inv.device, dtype=inv.dtype) + offset
            return torch.outer(seq, inv)

        def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False,
                    cp_group=None) -> Tensor:
            # megatron caches its table by these arguments only: the choice of factors joins the key
            return self._table(max_seq_len, offset, packed_seq, cp_group,
                               self.uses_long_factors(max_seq_len, offset))

        @functools.lru_cache(maxsize=32)  # noqa: B019 (as megatron's own forward: modules live for the run)
        def _table(self, max_seq_len, offset, packed_seq, cp_group, long) -> Tensor:
            del long  # part of the cache key; get_freqs_non_repeated decides it again, equally
            return RotaryEmbedding.forward.__wrapped__(self, max_seq_len, offset, packed_seq, cp_group)

    emb = LongRopeRotaryEmbedding.__new__(LongRopeRotaryEmbedding)
    emb.__dict__.update(original.__dict__)  # the same module state (cp group, device), another table
    emb.short_inv_freq = longrope_inv_freq(scaling, dim, base, long=False)
    emb.long_inv_freq = longrope_inv_freq(scaling, dim, base, long=True)
    emb.original_max_position_embeddings = int(scaling["original_max_position_embeddings"])
    emb.inv_freq = emb.short_inv_freq.to(original.inv_freq.device)
    return emb


def longrope_embeddings(model: torch.nn.Module) -> list:
    """The LongRoPE rotary embeddings of ``model`` (one per pipeline chunk; none without LongRoPE)."""
    return [m for m in model.modules() if getattr(m, "is_longrope", False)]
