"""Where adapter tensors sit in a megatron-core state dict, and the checkpoint key filter (torch-free).

A targeted layer keeps its base keys (``decoder.layers.N.self_attention.linear_qkv.weight``) and adds
``...linear_qkv.lora_A.weight`` and ``...linear_qkv.lora_B.weight`` (peft's factor names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LoraModule:
    """One adaptable megatron layer: its key prefix inside a decoder layer and the HF modules it fuses."""

    name: str  # the --lora-target-modules value
    mcore: str  # key prefix inside a decoder layer
    hf: tuple[str, ...]  # HF module paths inside a decoder layer (peft's target names are the last parts)

    @property
    def weight_key(self) -> str:
        """The base weight's key inside a decoder layer (the converter's mapping row of that weight)."""
        return self.mcore + ".weight"


LORA_MODULES: dict[str, LoraModule] = {
    m.name: m for m in (
        LoraModule("linear_qkv", "self_attention.linear_qkv",
                   ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        LoraModule("linear_proj", "self_attention.linear_proj", ("self_attn.o_proj",)),
        LoraModule("linear_fc1", "mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj")),
        LoraModule("linear_fc2", "mlp.linear_fc2", ("mlp.down_proj",)),
    )
}
# ``--lora-target-modules`` values (MindSpeed-LLM's): megatron-core's local-spec linear layers.
TARGET_MODULES: tuple[str, ...] = tuple(LORA_MODULES)

LORA_KEY = ".lora_"  # every adapter tensor's state-dict key holds it
_ADAPTER_KEY = re.compile(r"decoder\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight")
_MODULE_BY_PREFIX = {m.mcore: m.name for m in LORA_MODULES.values()}


def is_lora_key(key: str) -> bool:
    """True for an adapter tensor's state-dict key."""
    return LORA_KEY in key


def lora_state_dict(state_dict: dict) -> dict:
    """Only the adapter tensors of a model state dict (what ``--lora-ckpt-filter`` saves)."""
    return {k: v for k, v in state_dict.items() if is_lora_key(k)}


def without_lora(state_dict: dict) -> dict:
    """The base tensors of a model state dict (every key that is not an adapter's)."""
    return {k: v for k, v in state_dict.items() if not is_lora_key(k)}


def adapter_keys(layer: int, module: str) -> tuple[str, str]:
    """State-dict keys of one adapter's A and B in a stage's model (``layer`` is the stage-local index)."""
    prefix = f"decoder.layers.{layer}.{LORA_MODULES[module].mcore}"
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"


def parse_adapter_key(key: str) -> tuple[int, str, str] | None:
    """``(stage-local layer, module, "A" | "B")`` of an adapter tensor's key; None for any other key."""
    found = _ADAPTER_KEY.fullmatch(key)
    if not found or found.group(2) not in _MODULE_BY_PREFIX:
        return None
    return int(found.group(1)), _MODULE_BY_PREFIX[found.group(2)], found.group(3)


def holds_adapter(state_dict: dict) -> bool:
    """True when a model state dict holds adapter tensors."""
    return any(_ADAPTER_KEY.fullmatch(k) for k in state_dict)


def holds_only_adapter(state_dict: dict) -> bool:
    """True for a non-empty model state dict of adapter tensors alone (a ``--lora-ckpt-filter`` save)."""
    return bool(state_dict) and all(_ADAPTER_KEY.fullmatch(k) for k in state_dict)
