"""Long-context RoPE in megatron-core's attention (base patch, group ``ops``).

megatron-core 0.16.1's attention multiplies cos and sin by
``_yarn_get_concentration_factor_from_config(config)``: 1.0 unless the config carries MLA's
``yarn_*`` fields, and for those only megatron's formula. YaRN and LongRoPE as transformers computes
them (:mod:`mindspeed_llm.models.rope_scaling`) have an attention factor of their own (an explicit
``attention_factor``, LongRoPE's ``sqrt(1 + ln f / ln L)``); :meth:`ModelConfig.to_transformer_config`
records it as ``config.rope_attention_factor`` and this patch makes megatron read it. Configs without
it (every other model, and MLA's or a Megatron-LM ``--position-embedding-type yarn`` config) get
megatron's own answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from mindspeed_llm.patches.registry import PatchRegistry

CONCENTRATION_FACTOR = ("megatron.core.models.common.embeddings.yarn_rotary_pos_embedding."
                        "_yarn_get_concentration_factor_from_config")
# The modules holding a `from ... import` copy, imported first so the registry rebinds them.
_COPY_HOLDERS = ("megatron.core.transformer.attention",)


def _concentration_factor_wrapper(original: Callable) -> Callable:
    @functools.wraps(original)
    def _yarn_get_concentration_factor_from_config(config) -> float:
        factor = getattr(config, "rope_attention_factor", None)
        return original(config) if factor is None else float(factor)

    return _yarn_get_concentration_factor_from_config


def register_rope_patches(reg: PatchRegistry, group: str) -> None:
    """Register the attention-factor patch in ``group`` (applied with the base op patches)."""
    import importlib

    for module in _COPY_HOLDERS:
        importlib.import_module(module)
    reg.register(CONCENTRATION_FACTOR, wrapper=_concentration_factor_wrapper, group=group,
                 signature="(config)",
                 description="attention's cos/sin factor: the model's YaRN/LongRoPE attention factor "
                             "(config.rope_attention_factor, transformers' semantics) when it has one")
