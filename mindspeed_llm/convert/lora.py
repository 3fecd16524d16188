"""LoRA adapters in conversion: Megatron adapter <-> peft adapter folder, and merged HF weights.

Megatron's fused layers carry one adapter each: ``linear_qkv`` one A (r x hidden) and one B over the
fused, per-query-group interleaved output; ``linear_fc1`` one A and one B over ``[gate; up]``. peft
adapts ``q_proj``, ``k_proj``, ``v_proj`` (``gate_proj``, ``up_proj``) separately. The two forms map
exactly in one direction and conditionally in the other:

- export (fused -> separate): ``A_q = A_k = A_v = A`` (rank r each) and B's rows split like the
  base weight's (de-interleaved); ``B_q A_q`` is exactly the q rows of ``B A``.
- import (separate -> fused): exact when the separate A's are equal (an adapter this tool exported,
  or one trained with shared A). Different A's would need a rank-3r (block-diagonal) adapter whose
  training differs from peft's; it is refused with a line that names the fix (merge it into the
  base with peft's ``merge_and_unload`` and convert the merged model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass

import torch

from mindspeed_llm.convert.errors import CheckpointError, DamagedCheckpointError
from mindspeed_llm.convert.mapping import Split, Transform, hf_to_mcore, mcore_to_hf, shard, unshard
from mindspeed_llm.models.families import ModelConfig
from mindspeed_llm.runtime.checkpoint import layout

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.model.layers.{i}."


@dataclass(frozen=True)
class LoraModule:
    """One adaptable megatron layer: its key prefix, the HF modules it fuses, and how A and B split over TP."""

    name: str  # --lora-target-modules value
    mcore: str  # key prefix inside a decoder layer
    hf: tuple[str, ...]  # HF module paths inside a decoder layer (peft's target names are the last parts)
    transform: Transform  # how the HF modules' B rows make the fused B (as the base weight's rows)
    a_split: Split
    b_split: Split


LORA_MODULES = {
    m.name: m for m in (
        LoraModule("linear_qkv", "self_attention.linear_qkv", ("self_attn.q_proj", "self_attn.k_proj",
                                                                "self_attn.v_proj"), Transform.QKV,
                   Split.REPLICATED, Split.COLUMN),
        LoraModule("linear_proj", "self_attention.linear_proj", ("self_attn.o_proj",), Transform.COPY,
                   Split.ROW, Split.REPLICATED),
        LoraModule("linear_fc1", "mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj"), Transform.GATE_UP,
                   Split.REPLICATED, Split.GATE_UP),
        LoraModule("linear_fc2", "mlp.linear_fc2", ("mlp.down_proj",), Transform.COPY, Split.ROW, Split.REPLICATED),
    )
}
_HF_TO_MODULE = {hf.rsplit(".", 1)[1]: m for m in LORA_MODULES.values() for hf in m.hf}


@dataclass
class Adapter:
    """A whole (TP1) adapter: ``tensors[(global layer, module name)] = (A, B)`` in megatron's fused form."""

    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def scaling(self) -> float:
        """peft's ``lora_alpha / r``."""
        return self.alpha / self.r


def mcore_keys(layer: int, module: str) -> tuple[str, str]:
    """State-dict keys of one adapter's A and B in a stage's model (``layer`` is the stage-local index)."""
    prefix = f"decoder.layers.{layer}.{LORA_MODULES[module].mcore}"
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"


def shard_adapter(module: str, a: torch.Tensor, b: torch.Tensor, tp: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole A, B -> the ``tp`` rank-local pairs (the TP rule of docs/lora.md)."""
    m = LORA_MODULES[module]
    return list(zip(shard(m.a_split, a, tp), shard(m.b_split, b, tp)))


def unshard_adapter(module: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`shard_adapter`."""
    m = LORA_MODULES[module]
    return unshard(m.a_split, [p[0] for p in pairs]), unshard(m.b_split, [p[1] for p in pairs])


# ---- Megatron adapter checkpoints ----------------------------------------------------------------------
def _chunks(state: dict, path: str) -> list[str]:
    if "model" in state:
        return ["model"]
    keys = sorted((k for k in state if re.fullmatch(r"model\d+", k)), key=lambda k: int(k[5:]))
    if not keys:
        raise DamagedCheckpointError(f"{path}: no 'model' (nor model0, model1, ...) entry")
    return keys


_LORA_KEY = re.compile(r"decoder\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight")
_MODULE_BY_PREFIX = {m.mcore: m.name for m in LORA_MODULES.values()}


def read_mg_adapter(root: str, cfg: ModelConfig, *, iteration: int | str | None = None) -> Adapter | None:
    """The adapter held by a Megatron checkpoint folder (a --lora-ckpt-filter save or a full one), merged over
    TP and PP; None when the folder holds no adapter tensors."""
    iteration = layout.read_tracker(root) if iteration is None else iteration
    tp, pp = layout.parallel_sizes(root, iteration)
    first = layout.load_rank_state(root, iteration, 0, 0, pp)
    chunk_keys = _chunks(first, layout.checkpoint_file_for(root, iteration, 0, 0, pp))
    args = first.get("args") or argparse.Namespace()
    if not any(isinstance(first.get(key), dict) and any(_LORA_KEY.fullmatch(k) for k in first[key])
               for key in chunk_keys):
        return None  # adapters sit in every layer: none in the first rank file means none at all (no second pass)
    pieces: dict[tuple[int, str], list[list]] = {}
    offset = 0
    for stage in range(pp * len(chunk_keys)):
        pp_rank, key = stage % pp, chunk_keys[stage // pp]
        layers_here: set[int] = set()
        for t in range(tp):
            path = layout.checkpoint_file_for(root, iteration, t, pp_rank, pp)
            sd = layout.load_rank_state(root, iteration, t, pp_rank, pp).get(key)
            if not isinstance(sd, dict):
                raise DamagedCheckpointError(f"{path}: no '{key}' state dict")
            layers_here |= {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
            for k, v in sd.items():
                found = _LORA_KEY.fullmatch(k)
                if not found or found.group(2) not in _MODULE_BY_PREFIX:
                    continue
                slot = pieces.setdefault((offset + int(found.group(1)), _MODULE_BY_PREFIX[found.group(2)]),
                                         [[None] * tp, [None] * tp])
                slot[0 if found.group(3) == "A" else 1][t] = v
        offset += len(layers_here)
    if not pieces:
        return None
    if offset != cfg.num_layers:
        raise CheckpointError(f"{root}: its rank files hold {offset} layers but the base model has {cfg.num_layers}: "
                              "the adapter belongs to another model")
    tensors = {}
    for (layer, module), (a_parts, b_parts) in sorted(pieces.items()):
        if any(p is None for p in a_parts + b_parts):
            raise DamagedCheckpointError(f"{root}: layer {layer} {module} lacks lora_A or lora_B on some TP rank")
        tensors[(layer, module)] = unshard_adapter(module, list(zip(a_parts, b_parts)))
    modules = tuple(m for m in LORA_MODULES if any(k[1] == m for k in tensors))
    r = next(iter(tensors.values()))[0].shape[0]
    return Adapter(r=r, alpha=float(getattr(args, "lora_alpha", 2 * r)), dropout=float(getattr(args, "lora_dropout", 0.0)),
                   target_modules=modules, tensors=tensors)


def check_not_adapter_only(root: str, iteration: int | str | None = None) -> None:
    """A --load-dir holding only adapter tensors (a --lora-ckpt-filter save) is no base: say what to pass."""
    if not os.path.isfile(os.path.join(root, layout.TRACKER_FILENAME)) and iteration is None:
        return  # not a legacy checkpoint folder: its reader names the problem
    try:
        iteration = layout.read_tracker(root) if iteration is None else iteration
        found = layout.list_rank_dirs(root, iteration)
        state = layout.load_rank_file(found[min(found)], mmap=True) if found else {}
    except CheckpointError:
        return  # the reader reports it
    models = [sd for name, sd in state.items() if name.startswith("model") and isinstance(sd, dict)]
    if models and all(sd and all(_LORA_KEY.fullmatch(k) for k in sd) for sd in models):
        raise CheckpointError(f"--load-dir {root} holds only LoRA adapter tensors (saved with --lora-ckpt-filter): "
                              "pass the base model's checkpoint as --load-dir and this folder as --lora-load")


def adapter_stage_tensors(adapter: Adapter, layers: range, tp: int) -> list[dict]:
    """The rank-local adapter tensors (state-dict keys with stage-local layer numbers) of one stage."""
    out: list[dict] = [{} for _ in range(tp)]
    for local, layer in enumerate(layers):
        for module in adapter.target_modules:
            a, b = adapter.tensors[(layer, module)]
            ka, kb = mcore_keys(local, module)
            for t, (a_t, b_t) in enumerate(shard_adapter(module, a, b, tp)):
                out[t][ka], out[t][kb] = a_t, b_t
    return out


# ---- peft adapter folders --------------------------------------------------------------------------------
def _hf_parts(module: str, b: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Fused B -> the HF modules' B's (rows de-interleaved like the base weight)."""
    m = LORA_MODULES[module]
    return [b] if m.transform is Transform.COPY else mcore_to_hf(_mapping(m), b, cfg)


def _mapping(m: LoraModule):
    from mindspeed_llm.convert.mapping import TensorMapping

    return TensorMapping(m.mcore + ".weight", m.hf, m.transform, m.b_split)


def peft_tensors(adapter: Adapter, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """peft's ``adapter_model.safetensors`` entries: each HF module gets the shared A and its rows of B."""
    out = {}
    for (layer, module), (a, b) in sorted(adapter.tensors.items()):
        m = LORA_MODULES[module]
        for hf, b_part in zip(m.hf, _hf_parts(module, b, cfg)):
            prefix = PEFT_PREFIX.format(i=layer) + hf
            out[f"{prefix}.lora_A.weight"] = a.contiguous().clone()
            out[f"{prefix}.lora_B.weight"] = b_part.contiguous().clone()
    return out


def peft_config(adapter: Adapter, base_model: str | None) -> dict:
    """``adapter_config.json`` for peft's LoRA on the HF model."""
    targets = sorted(hf.rsplit(".", 1)[1] for m in adapter.target_modules for hf in LORA_MODULES[m].hf)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": adapter.r, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def write_peft_adapter(adapter: Adapter, cfg: ModelConfig, folder: str, base_model: str | None) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder`` (which exists)."""
    from safetensors.torch import save_file

    save_file(peft_tensors(adapter, cfg), os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(peft_config(adapter, base_model), f, indent=2)


def _refuse_peft_setting(config: dict, path: str) -> None:
    """peft settings our LoRA does not have are refused by name (never silently dropped)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {config.get('peft_type')} is not LoRA: only LoRA adapters convert")
    for key, allowed in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"),
                         ("lora_bias", False)):
        if config.get(key, allowed) != allowed:
            raise CheckpointError(f"{path}: {key}={config.get(key)!r} is not supported (our LoRA is plain LoRA: "
                                  f"{key}={allowed!r})")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layers_pattern",
                "target_parameters", "trainable_token_indices"):
        if config.get(key):
            raise CheckpointError(f"{path}: {key} is set ({config[key]!r}): per-module ranks, extra trained modules "
                                  "and layer subsets are not supported; export a plain adapter")


def read_peft_adapter(folder: str, cfg: ModelConfig) -> Adapter:
    """A peft LoRA folder -> megatron's fused adapter (refused where the fused form cannot hold it exactly)."""
    from safetensors.torch import load_file

    config_path = os.path.join(folder, ADAPTER_CONFIG)
    weights_path = os.path.join(folder, ADAPTER_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"--lora-load {folder}: {os.path.basename(path)} missing: give a peft adapter folder "
                                  "(PeftModel.save_pretrained)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as exc:
        raise DamagedCheckpointError(f"{config_path} is not valid JSON ({str(exc)[:80]})") from None
    _refuse_peft_setting(config, config_path)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(t for t in targets if t not in _HF_TO_MODULE)
    if unknown:
        raise CheckpointError(f"{config_path}: target_modules {unknown} have no megatron LoRA counterpart (supported: "
                              f"{', '.join(sorted(_HF_TO_MODULE))})")
    modules = [m for m in LORA_MODULES.values() if any(h.rsplit(".", 1)[1] in targets for h in m.hf)]
    for m in modules:
        names = [h.rsplit(".", 1)[1] for h in m.hf]
        if not all(n in targets for n in names):
            raise CheckpointError(f"{config_path}: target_modules adapts {', '.join(n for n in names if n in targets)} "
                                  f"but not all of {', '.join(names)}: megatron's fused {m.name} takes one adapter "
                                  "for all of them; train the adapter on all of them")
    state = load_file(weights_path)
    r = int(config["r"])
    tensors = {}
    for layer in range(cfg.num_layers):
        for m in modules:
            a_list, b_list = [], []
            for hf in m.hf:
                prefix = PEFT_PREFIX.format(i=layer) + hf
                ka, kb = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
                if ka not in state or kb not in state:
                    raise CheckpointError(f"{weights_path}: {ka if ka not in state else kb} missing: the adapter "
                                          "belongs to another model (or is incomplete)")
                a_list.append(state[ka])
                b_list.append(state[kb])
            if any(not torch.equal(a_list[0], a) for a in a_list[1:]):
                names = "/".join(h.rsplit(".", 1)[1] for h in m.hf)
                raise CheckpointError(
                    f"{weights_path}: layer {layer} {names} have different lora_A matrices; megatron's fused {m.name} "
                    "shares one A, so this adapter has no exact rank-r form here. Merge it into the base model "
                    "(peft's merge_and_unload) and convert that, or train it with shared A (an adapter exported by "
                    "convert_ckpt.py)")
            if a_list[0].shape[0] != r:
                raise CheckpointError(f"{weights_path}: layer {layer} {m.name} has rank {a_list[0].shape[0]}, the "
                                      f"config says r={r}")
            b = b_list[0] if m.transform is Transform.COPY else hf_to_mcore(_mapping(m), b_list, cfg)
            tensors[(layer, m.name)] = (a_list[0], b)
    return Adapter(r=r, alpha=float(config.get("lora_alpha", 8)), dropout=float(config.get("lora_dropout", 0.0)),
                   target_modules=tuple(m.name for m in modules), tensors=tensors)


# ---- merged weights ----------------------------------------------------------------------------------------
class MergedSource:
    """A conversion source whose targeted weights are ``W + B A * scaling`` (peft's merge), in float32.

    Each HF weight gets its own ``B_x @ A`` as peft computes it (float32, then times the scaling);
    the writer casts the sum to the output dtype once, as peft's in-place ``weight += delta`` does.
    """

    def __init__(self, source, adapter: Adapter):
        self.source = source
        self.adapter = adapter
        self.cfg = source.cfg
        self._by_weight = {LORA_MODULES[m].mcore + ".weight": m for m in adapter.target_modules}

    def __getattr__(self, name):
        return getattr(self.source, name)

    def layer(self, layer: int, m) -> torch.Tensor:
        """The base tensor, merged with the adapter where one targets it."""
        full = self.source.layer(layer, m)
        module = self._by_weight.get(m.mcore)
        if module is None:
            return full
        a, b = self.adapter.tensors[(layer, module)]
        bases = mcore_to_hf(m, full, self.cfg)
        deltas = _hf_parts(module, b, self.cfg)
        merged = [w.float() + (bx.float() @ a.float()) * self.adapter.scaling for w, bx in zip(bases, deltas)]
        return hf_to_mcore(m, merged, self.cfg)
