"""LoRA's settings: the ``--lora-*`` flags of every command line, their checks, and :class:`LoraConfig`.

One declaration serves ``pretrain_gpt.py`` / ``posttrain_gpt.py`` / ``inference.py`` (the training parser)
and ``convert_ckpt.py``: :func:`add_lora_flags` and :func:`check_lora_flags`. :class:`LoraConfig` is the
one type that carries the settings, made from the parsed flags, from a checkpoint's recorded args or from
peft's ``adapter_config.json``.

Torch-free (no torch, megatron-core or transformers): the command lines import it before the heavy modules.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mindspeed_llm.lora.keys import LORA_MODULES, TARGET_MODULES


class LoraError(ValueError):
    """A LoRA flag or adapter that cannot be used; one line naming the flag or path and the fix."""


# ---- the flags ------------------------------------------------------------------------------------------
# One row per flag: its spelling, the argparse settings both command lines share, then (default, help) on
# the training command line and on convert_ckpt.py (None: that command line has no such flag). On
# convert_ckpt.py the adapter checkpoint records r, alpha and the target modules: the flags default to None
# there and are checked against it (MindSpeed-LLM's conversion scripts pass them).
_TRAINING_LOAD_HELP = ("an adapter checkpoint (a --save folder of a LoRA run): --load gives the base "
                       "weights, this folder the adapter, optimizer, scheduler and iteration")
_CONVERTER_LOAD_HELP = ("LoRA adapter: hf->mg a peft adapter folder (written beside the base weights); "
                        "mg->hf / mg->mg a Megatron adapter checkpoint (a LoRA run's --save; default: the "
                        "adapter inside --load-dir)")
_FLAGS: tuple[tuple[str, dict, tuple | None, tuple | None], ...] = (
    ("--lora-target-modules", {"nargs": "+", "choices": TARGET_MODULES},
     ([], "add LoRA adapters to these linear layers and freeze every other weight"),
     (None, "checked against the adapter checkpoint")),
    ("--lora-r", {"type": int},
     (16, "LoRA rank (16)"),
     (None, "checked against the adapter checkpoint, which records it (MindSpeed's scripts pass it)")),
    ("--lora-alpha", {"type": float},
     (32, "LoRA alpha; the adapter is scaled by alpha / r (32)"),
     (None, "checked against the adapter checkpoint")),
    ("--lora-dropout", {"type": float},
     (0.0, "dropout on the adapter's input (0.0)"),
     None),
    ("--lora-load", {},
     (None, _TRAINING_LOAD_HELP),
     (None, _CONVERTER_LOAD_HELP)),
    ("--lora-ckpt-filter", {"action": "store_true"},
     (False, "--save writes only the adapter tensors (plus optimizer, scheduler, RNG, iteration)"),
     None),
    ("--save-lora-to-hf", {"action": "store_true"},
     None,
     (False, "mg->hf: write only the adapter, as a peft folder (without it: merged HF weights)")),
)
GROUP_TITLE = "LoRA (docs/lora.md)"


def add_lora_flags(parser: argparse.ArgumentParser, *, converter: bool = False) -> argparse._ArgumentGroup:
    """Declare the ``--lora-*`` flags in their own group: the training command line's, or with ``converter``
    convert_ckpt.py's (its r / alpha / target modules are checked against the adapter it converts)."""
    group = parser.add_argument_group(GROUP_TITLE)
    for flag, shared, training, conversion in _FLAGS:
        spec = conversion if converter else training
        if spec is not None:
            group.add_argument(flag, **shared, default=spec[0], help=spec[1])
    return group


def check_lora_flags(args: argparse.Namespace, *, converter: bool = False) -> None:
    """The ``--lora-*`` flags against each other and the rest of the launch (the training command line's, or
    with ``converter`` convert_ckpt.py's); :class:`LoraError` names the flag and the fix."""
    if converter:
        _check_converter_flags(args)
        return
    if not args.lora_target_modules:
        given = [flag for flag, on in (("--lora-load", args.lora_load),
                                       ("--lora-ckpt-filter", args.lora_ckpt_filter)) if on]
        if given:
            raise LoraError(f"{' '.join(given)} without --lora-target-modules: name the adapted layers, e.g. "
                            "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2")
        return
    if args.lora_r <= 0:
        raise LoraError(f"--lora-r must be positive, got {args.lora_r}")
    if not 0 < args.lora_alpha < float("inf"):  # nan fails this too
        raise LoraError(f"--lora-alpha must be positive and finite, got {args.lora_alpha}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise LoraError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    check_moe_targets(args.lora_target_modules, getattr(args, "num_experts", None))
    if args.ckpt_format != "torch":
        raise LoraError(f"--lora-target-modules with --ckpt-format {args.ckpt_format}: LoRA checkpoints use "
                        "the legacy layout; use --ckpt-format torch")
    if args.lora_load and not args.load:
        raise LoraError(f"--lora-load {args.lora_load} needs --load BASE (the base model's checkpoint)")
    same_as_save = bool(args.save) and os.path.realpath(args.lora_load or "") == os.path.realpath(args.save)
    if args.lora_load and not os.path.isdir(args.lora_load) and not same_as_save:
        raise LoraError(f"--lora-load {args.lora_load} is not a folder: give the --save folder of a LoRA run "
                        "(or the same folder as --save, to start a new adapter there and resume it on a "
                        "relaunch)")


# Targets a mixture-of-experts model can take: the attention layers. Its MLP layers are megatron-core's
# experts (SequentialMLP's per-expert linears in the expert tensor-parallel group, or GroupedMLP's fused
# weights), whose adapters would need their own TP/EP rule and checkpoint keys (docs/lora.md).
MOE_TARGETS: tuple[str, ...] = ("linear_qkv", "linear_proj")


def check_moe_targets(targets, num_experts: int | None, where: str = "--lora-target-modules") -> None:
    """On a mixture-of-experts model only the attention layers take adapters; :class:`LoraError` names the
    refused targets (``where``: the flag or the adapter file that names them) and what is allowed."""
    refused = [t for t in targets or () if t not in MOE_TARGETS]
    if num_experts and refused:
        raise LoraError(f"{where} {' '.join(refused)}: adapters on the MLP/expert layers of a "
                        f"mixture-of-experts model (--num-experts {num_experts}) are not supported; adapt "
                        f"the attention layers: --lora-target-modules {' '.join(MOE_TARGETS)}")


def _check_converter_flags(args: argparse.Namespace) -> None:
    """convert_ckpt.py: --save-lora-to-hf is an mg->hf option; r / alpha / targets only for mg sources."""
    if args.save_lora_to_hf and (args.load_model_type, args.save_model_type) != ("mg", "hf"):
        raise LoraError("--save-lora-to-hf writes a peft adapter from a Megatron checkpoint: use it with "
                        "--load-model-type mg --save-model-type hf")
    given = [_FIELD_FLAGS[f] for f in recorded_flags_given(args)]
    if given and args.load_model_type != "mg":
        raise LoraError(f"{' '.join(given)}: a peft adapter folder records these; drop them for hf->mg")
    if args.lora_load and not os.path.isdir(args.lora_load):
        raise LoraError(f"--lora-load {args.lora_load} is not a folder: give a peft adapter folder (hf->mg) "
                        "or a LoRA run's --save folder (mg->hf, mg->mg)")


# ---- convert_ckpt.py: the flags an adapter checkpoint records -------------------------------------------
_FIELD_FLAGS = {"r": "--lora-r", "alpha": "--lora-alpha", "target_modules": "--lora-target-modules"}


def recorded_flags_given(args: argparse.Namespace) -> dict[str, object]:
    """convert_ckpt.py's --lora-r / --lora-alpha / --lora-target-modules that were given, by LoraConfig
    field (the adapter records them; :func:`check_recorded` compares)."""
    given = {"r": args.lora_r, "alpha": args.lora_alpha,
             "target_modules": tuple(args.lora_target_modules) if args.lora_target_modules else None}
    return {field: value for field, value in given.items() if value is not None}


def check_recorded(expected: Mapping[str, object], recorded: LoraConfig | None, where: str) -> None:
    """Flags given to convert_ckpt.py (``expected``, by field) must agree with the adapter ``where`` holds."""
    for field, flag in _FIELD_FLAGS.items():
        if field not in expected:
            continue
        given, have = expected[field], recorded and getattr(recorded, field)
        if field == "target_modules":
            given, have = sorted(given), recorded and sorted(have)
        if given != have:
            raise LoraError(f"{flag} {given} contradicts the adapter in {where} "
                            f"({have if recorded else 'none'}): drop the flag (the checkpoint records it) or "
                            "point --lora-load at the right adapter")


# ---- the settings -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraConfig:
    """The adapter's settings (``--lora-r``, ``--lora-alpha``, ``--lora-dropout``,
    ``--lora-target-modules``; ``--seed`` draws its initial A) and the run's LoRA checkpoint flags
    (``--lora-load``, ``--lora-ckpt-filter``)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = TARGET_MODULES
    seed: int = 1234  # the initial A is drawn from (seed, global layer, module): the same at any TP/PP
    load: str | None = None  # --lora-load: the adapter checkpoint the run continues
    ckpt_filter: bool = False  # --lora-ckpt-filter: --save writes the adapter tensors alone

    @property
    def scaling(self) -> float:
        """peft's ``lora_alpha / r`` (no rsLoRA)."""
        return self.alpha / self.r

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoraConfig | None:
        """The run's LoRA (the training parser's flags), or None without ``--lora-target-modules``."""
        if not getattr(args, "lora_target_modules", None):
            return None
        return cls(r=args.lora_r, alpha=float(args.lora_alpha), dropout=args.lora_dropout,
                   target_modules=tuple(args.lora_target_modules), seed=args.seed, load=args.lora_load,
                   ckpt_filter=bool(args.lora_ckpt_filter))

    @classmethod
    def from_checkpoint_args(cls, args: argparse.Namespace | None, *, r: int,
                             target_modules: tuple[str, ...]) -> LoraConfig:
        """An adapter checkpoint's settings: ``r`` and the targets as its tensors show, alpha and dropout as
        its recorded args say (alpha ``2 r`` and dropout 0 where they say nothing)."""
        return cls(r=r, alpha=float(getattr(args, "lora_alpha", None) or 2 * r),
                   dropout=float(getattr(args, "lora_dropout", None) or 0.0),
                   target_modules=tuple(target_modules))

    @classmethod
    def from_recorded_args(cls, args: argparse.Namespace) -> LoraConfig | None:
        """The adapter a run's args, or a checkpoint file's recorded args, name (r, alpha, dropout, targets);
        None without ``lora_target_modules``. Tolerant of args written by other tools (no seed, no
        dropout)."""
        if not getattr(args, "lora_target_modules", None):
            return None
        return cls(r=int(args.lora_r), alpha=float(args.lora_alpha),
                   dropout=float(getattr(args, "lora_dropout", 0.0) or 0.0),
                   target_modules=tuple(args.lora_target_modules))

    def recorded(self) -> LoraConfig:
        """What a checkpoint records of this adapter: its settings, without the run's seed and checkpoint
        flags (those are the launch's, not the adapter's)."""
        return LoraConfig(r=self.r, alpha=self.alpha, dropout=self.dropout,
                          target_modules=self.target_modules)

    def to_record(self) -> dict[str, object]:
        """The checkpoint record's ``lora`` section (plain data: r, alpha, dropout, target_modules)."""
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules)}

    @classmethod
    def from_record(cls, data: Mapping[str, object]) -> LoraConfig:
        """Read what :meth:`to_record` wrote (a missing or unknown entry raises TypeError)."""
        entries = {"r", "alpha", "dropout", "target_modules"}
        if set(data) != entries:
            raise TypeError(f"LoRA record entries {sorted(data)}, expected {sorted(entries)}")
        return cls(r=data["r"], alpha=data["alpha"], dropout=data["dropout"],
                   target_modules=tuple(data["target_modules"]))

    def checkpoint_args(self) -> dict[str, object]:
        """What a checkpoint holding this adapter records in its args: the flags a launch continuing it
        passes."""
        return {"lora_r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "lora_target_modules": list(self.target_modules)}

    @classmethod
    def from_peft_config(cls, config: dict, path: str) -> LoraConfig:
        """peft's ``adapter_config.json`` (read from ``path``); settings our LoRA lacks are refused."""
        _refuse_peft_settings(config, path)
        targets = config.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else list(targets)
        by_hf = {hf.rsplit(".", 1)[1]: m for m in LORA_MODULES.values() for hf in m.hf}
        unknown = sorted(t for t in targets if t not in by_hf)
        if unknown:
            raise LoraError(f"{path}: target_modules {unknown} have no megatron LoRA counterpart (supported: "
                            f"{', '.join(sorted(by_hf))})")
        modules = [m for m in LORA_MODULES.values() if any(h.rsplit(".", 1)[1] in targets for h in m.hf)]
        for m in modules:
            names = [h.rsplit(".", 1)[1] for h in m.hf]
            if not all(n in targets for n in names):
                adapted = ", ".join(n for n in names if n in targets)
                raise LoraError(f"{path}: target_modules adapts {adapted} but not all of {', '.join(names)}: "
                                f"megatron's fused {m.name} takes one adapter for all of them; train the "
                                "adapter on all of them")
        if not isinstance(config.get("r"), int) or config["r"] <= 0:
            raise LoraError(f"{path}: r is {config.get('r')!r}, not a positive rank: give a peft LoRA "
                            "adapter folder")
        alpha, dropout = config.get("lora_alpha", 8), config.get("lora_dropout", 0.0)
        for name, value in (("lora_alpha", alpha), ("lora_dropout", dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LoraError(f"{path}: {name} is {value!r}, not a number: give a peft LoRA adapter folder")
        return cls(r=config["r"], alpha=float(alpha),
                   dropout=float(dropout),
                   target_modules=tuple(m.name for m in modules))

    def to_peft_config(self, base_model: str | None) -> dict:
        """``adapter_config.json`` for peft's LoRA on the HF model (``base_model``: its folder, if known)."""
        targets = sorted(hf.rsplit(".", 1)[1] for m in self.target_modules for hf in LORA_MODULES[m].hf)
        return {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "target_modules": targets,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
        }


def _refuse_peft_settings(config: dict, path: str) -> None:
    """peft settings our LoRA does not have are refused by name (never silently dropped)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{path}: peft_type {config.get('peft_type')} is not LoRA: only LoRA adapters "
                        "convert")
    for key, allowed in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False),
                         ("bias", "none"), ("lora_bias", False)):
        if config.get(key, allowed) != allowed:
            raise LoraError(f"{path}: {key}={config.get(key)!r} is not supported (our LoRA is plain LoRA: "
                            f"{key}={allowed!r})")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layers_pattern",
                "target_parameters", "trainable_token_indices"):
        if config.get(key):
            raise LoraError(f"{path}: {key} is set ({config[key]!r}): per-module ranks, extra trained "
                            "modules and layer subsets are not supported; export a plain adapter")
