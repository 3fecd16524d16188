"""peft adapter folders (``adapter_config.json``, ``adapter_model.safetensors``) <-> megatron's fused adapter.

Megatron's fused layers carry one adapter each: ``linear_qkv`` one A (r x hidden) and one B over the fused,
per-query-group interleaved output; ``linear_fc1`` one A and one B over ``[gate; up]``. peft adapts
``q_proj``, ``k_proj``, ``v_proj`` (``gate_proj``, ``up_proj``) separately. The two forms map exactly in one
direction and conditionally in the other:

- export (fused -> separate): ``A_q = A_k = A_v = A`` (rank r each) and B's rows split like the base
  weight's (de-interleaved); ``B_q A_q`` is exactly the q rows of ``B A``.
- import (separate -> fused): exact when the separate A's are equal (an adapter this tool exported, or one
  trained with shared A). Different A's would need a rank-3r (block-diagonal) adapter whose training
  differs from peft's; it is refused with a line that names the fix (merge it into the base with peft's
  ``merge_and_unload`` and convert the merged model).

How the fused rows part is the base weight's layout, which the caller's :class:`FusedRows` knows.
"""

from __future__ import annotations

import json
import os

import torch

from mindspeed_llm.lora.adapter import Adapter, FusedRows, base_shapes, check_settings
from mindspeed_llm.lora.config import LoraConfig, LoraError, check_moe_targets
from mindspeed_llm.lora.keys import LORA_MODULES

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.model.layers.{i}."


def hf_parts(module: str, b: torch.Tensor, rows: FusedRows) -> list[torch.Tensor]:
    """A fused B -> the HF modules' B's (rows parted like the base weight's)."""
    return rows.split(LORA_MODULES[module].weight_key, b)


def peft_tensors(adapter: Adapter, rows: FusedRows) -> dict[str, torch.Tensor]:
    """peft's ``adapter_model.safetensors`` entries: each HF module gets the shared A and its rows of B."""
    out = {}
    for (layer, module), (a, b) in sorted(adapter.tensors.items()):
        for hf, b_part in zip(LORA_MODULES[module].hf, hf_parts(module, b, rows)):
            prefix = PEFT_PREFIX.format(i=layer) + hf
            out[f"{prefix}.lora_A.weight"] = a.contiguous().clone()
            out[f"{prefix}.lora_B.weight"] = b_part.contiguous().clone()
    return out


def write_peft_adapter(adapter: Adapter, rows: FusedRows, folder: str, base_model: str | None) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder`` (which exists)."""
    from safetensors.torch import save_file

    save_file(peft_tensors(adapter, rows), os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(adapter.config.to_peft_config(base_model), f, indent=2)


def read_peft_adapter(folder: str, num_layers: int, rows: FusedRows) -> Adapter:
    """A peft LoRA folder -> megatron's fused adapter (refused where the fused form cannot hold it
    exactly, or where a tensor does not fit the base: ``rows.cfg``); ``num_layers``: the base model's."""
    from safetensors.torch import load_file

    config_path = os.path.join(folder, ADAPTER_CONFIG)
    weights_path = os.path.join(folder, ADAPTER_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise LoraError(f"--lora-load {folder}: {os.path.basename(path)} missing: give a peft adapter "
                            "folder (PeftModel.save_pretrained)")
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except ValueError as exc:
        raise LoraError(f"{config_path} is not valid JSON ({str(exc)[:80]})") from None
    config = LoraConfig.from_peft_config(raw, config_path)
    check_settings(config, config_path)
    check_moe_targets(config.target_modules, getattr(rows.cfg, "num_experts", None), f"{config_path} adapts")
    try:
        state = load_file(weights_path)
    except Exception as exc:  # noqa: BLE001 - safetensors' errors on a damaged file
        raise LoraError(f"{weights_path} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    shapes = base_shapes(rows.cfg)
    tensors = {}
    for layer in range(num_layers):
        for module in config.target_modules:
            m = LORA_MODULES[module]
            a_list, b_list = [], []
            in_features, outs = shapes[module]
            for hf, out_features in zip(m.hf, outs):
                prefix = PEFT_PREFIX.format(i=layer) + hf
                ka, kb = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
                if ka not in state or kb not in state:
                    raise LoraError(f"{weights_path}: {ka if ka not in state else kb} missing: the adapter "
                                    "belongs to another model (or is incomplete)")
                for key, want in ((ka, (config.r, in_features)), (kb, (out_features, config.r))):
                    if tuple(state[key].shape) != want:
                        raise LoraError(
                            f"{weights_path}: {key} has shape {list(state[key].shape)}, the base model's "
                            f"{hf} needs {list(want)} (r={config.r}): the adapter belongs to another model")
                a_list.append(state[ka])
                b_list.append(state[kb])
            if any(not torch.equal(a_list[0], a) for a in a_list[1:]):
                names = "/".join(h.rsplit(".", 1)[1] for h in m.hf)
                raise LoraError(
                    f"{weights_path}: layer {layer} {names} have different lora_A matrices; megatron's fused "
                    f"{m.name} shares one A, so this adapter has no exact rank-r form here. Merge it into "
                    "the base model (peft's merge_and_unload) and convert that, or train it with shared A "
                    "(an adapter exported by convert_ckpt.py)")
            if a_list[0].shape[0] != config.r:
                raise LoraError(f"{weights_path}: layer {layer} {m.name} has rank {a_list[0].shape[0]}, the "
                                f"config says r={config.r}")
            b = rows.join(m.weight_key, b_list)
            tensors[(layer, module)] = (a_list[0], b)
    extra = sorted({int(k[len("base_model.model.model.layers."):].split(".", 1)[0]) for k in state
                    if k.startswith("base_model.model.model.layers.")} - set(range(num_layers)))
    if extra:
        raise LoraError(f"{weights_path}: adapts layer {extra[0]}, the base model has {num_layers} layers: "
                        "the adapter belongs to another model")
    return Adapter(config, tensors)
