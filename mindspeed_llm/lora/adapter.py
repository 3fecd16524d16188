"""A whole adapter (every layer, TP1, megatron's fused form) and its tensors in Megatron checkpoints.

Conversion reads and writes the checkpoint files; this module says which tensors are the adapter's, where
they sit in each rank's state dict and how they split over TP (``lora/tp.py``'s rule).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from mindspeed_llm.lora.config import LoraConfig, LoraError, check_moe_targets
from mindspeed_llm.lora.keys import LORA_MODULES, adapter_keys, parse_adapter_key
from mindspeed_llm.lora.tp import shard_adapter, unshard_adapter


@dataclass
class Adapter:
    """A whole adapter: its settings and ``tensors[(global layer, module)] = (A, B)`` (fused form)."""

    config: LoraConfig
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    def stage_tensors(self, layers: range, tp: int) -> list[dict]:
        """The rank-local adapter tensors of one pipeline stage holding global ``layers``, per TP rank
        (state-dict keys with stage-local layer numbers)."""
        out: list[dict] = [{} for _ in range(tp)]
        for local, layer in enumerate(layers):
            for module in self.config.target_modules:
                a, b = self.tensors[(layer, module)]
                ka, kb = adapter_keys(local, module)
                for t, (a_t, b_t) in enumerate(shard_adapter(module, a, b, tp)):
                    out[t][ka], out[t][kb] = a_t, b_t
        return out


def base_shapes(cfg) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{module: (in_features, out rows per HF module)}`` of the base model's adaptable linears (TP1)
    (``cfg``: the base's ``ModelConfig``)."""
    q = cfg.num_attention_heads * cfg.kv_channels
    kv = cfg.num_query_groups * cfg.kv_channels
    return {
        "linear_qkv": (cfg.hidden_size, (q, kv, kv)),
        "linear_proj": (q, (cfg.hidden_size,)),
        "linear_fc1": (cfg.hidden_size, (cfg.ffn_hidden_size, cfg.ffn_hidden_size)),
        "linear_fc2": (cfg.ffn_hidden_size, (cfg.hidden_size,)),
    }


def check_settings(config: LoraConfig, where: str) -> None:
    """r a positive integer, alpha positive and finite: what the adapter's scaling ``alpha / r`` needs."""
    if isinstance(config.r, bool) or not isinstance(config.r, int) or config.r <= 0:
        raise LoraError(f"{where}: r is {config.r!r}, not a positive rank: the adapter is damaged or not "
                        "LoRA")
    if not (isinstance(config.alpha, (int, float)) and math.isfinite(config.alpha) and config.alpha > 0):
        raise LoraError(f"{where}: lora_alpha is {config.alpha!r}, not a positive finite number: the "
                        "adapter's scaling alpha / r would be meaningless")


def check_fits(adapter: Adapter, cfg, where: str) -> None:
    """Every (A, B) of a fused adapter fits the base model's layer (``cfg``: its ``ModelConfig``): A is
    ``[r, in]``, B ``[out, r]``; layers and modules exist. Checked before anything is written; the line
    names the adapter, the tensor, its shape and the base's."""
    check_settings(adapter.config, where)
    check_moe_targets(adapter.config.target_modules, getattr(cfg, "num_experts", None), f"{where} adapts")
    shapes = base_shapes(cfg)
    for (layer, module), (a, b) in sorted(adapter.tensors.items()):
        if module not in shapes:
            raise LoraError(f"{where}: adapts {module}, which the base model has no such layer for")
        if layer >= cfg.num_layers:
            raise LoraError(f"{where}: adapts layer {layer}, the base model has {cfg.num_layers} layers: the "
                            "adapter belongs to another model")
        in_features, outs = shapes[module]
        expected = {"lora_A": (adapter.config.r, in_features), "lora_B": (sum(outs), adapter.config.r)}
        for factor, tensor in (("lora_A", a), ("lora_B", b)):
            if tuple(tensor.shape) != expected[factor]:
                raise LoraError(
                    f"{where}: decoder.layers.{layer}.{LORA_MODULES[module].mcore}.{factor}.weight has shape "
                    f"{list(tensor.shape)}, the base model's layer needs {list(expected[factor])}: the "
                    "adapter belongs to another model (or another --lora-r)")


class FusedRows(Protocol):
    """How a base weight's output rows part into the HF modules' weights (the converter's mapping knows:
    ``linear_qkv`` interleaved per query group, ``linear_fc1`` as ``[gate; up]``, one part for the others).
    ``weight_key`` is the base weight's key inside a decoder layer (``self_attention.linear_qkv.weight``);
    ``cfg`` the base model's ``ModelConfig`` (the layers' shapes)."""

    cfg: object

    def split(self, weight_key: str, fused: torch.Tensor) -> list[torch.Tensor]:
        """Fused rows -> one tensor per HF module."""

    def join(self, weight_key: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`."""


class AdapterCollector:
    """Gathers a Megatron checkpoint's adapter tensors, rank file by rank file, into a whole :class:`Adapter`.

    Feed each pipeline stage's TP rank state dicts in order (:meth:`add_stage`), then :meth:`adapter`.
    """

    def __init__(self, tp: int, where: str):
        self.tp = tp
        self.where = where
        self._pieces: dict[tuple[int, str], list[list]] = {}
        self._offset = 0  # global number of the stage's first layer

    def add_stage(self, rank_states: list[dict]) -> None:
        """One stage's model state dicts, TP rank 0 first."""
        layers_here: set[int] = set()
        for t, state in enumerate(rank_states):
            for key, value in state.items():
                if key.startswith("decoder.layers."):
                    layers_here.add(int(key.split(".", 3)[2]))
                found = parse_adapter_key(key)
                if found is None:
                    continue
                layer, module, factor = found
                slot = self._pieces.setdefault((self._offset + layer, module),
                                               [[None] * self.tp, [None] * self.tp])
                slot[0 if factor == "A" else 1][t] = value
        self._offset += len(layers_here)

    def adapter(self, num_layers: int, recorded_args: argparse.Namespace | None) -> Adapter | None:
        """The whole adapter, None when no rank file held adapter tensors (``recorded_args``: the
        checkpoint's)."""
        if not self._pieces:
            return None
        if self._offset != num_layers:
            raise LoraError(f"{self.where}: its rank files hold {self._offset} layers but the base model has "
                            f"{num_layers}: the adapter belongs to another model")
        tensors = {}
        for (layer, module), (a_parts, b_parts) in sorted(self._pieces.items()):
            if any(p is None for p in a_parts + b_parts):
                raise LoraError(f"{self.where}: layer {layer} {module} lacks lora_A or lora_B on some TP "
                                "rank")
            tensors[(layer, module)] = unshard_adapter(module, list(zip(a_parts, b_parts)))
        modules = tuple(m for m in LORA_MODULES if any(k[1] == m for k in tensors))
        r = next(iter(tensors.values()))[0].shape[0]
        return Adapter(LoraConfig.from_checkpoint_args(recorded_args, r=r, target_modules=modules), tensors)
