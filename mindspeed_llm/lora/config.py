"""The LoRA flags and their rules, torch-free (stand-in until helper C's ``mindspeed_llm/lora/config.py`` lands).

Moved unchanged from ``training/arguments.py`` so that the training parser calls the contract's two
functions, :func:`add_lora_flags` and :func:`check_lora_flags`. The lead replaces this file by helper C's.
"""

from __future__ import annotations

import argparse
import os

from mindspeed_llm.models.names import LORA_TARGET_MODULES


class LoraFlagError(ValueError):
    """LoRA flags that cannot work together; the message names the flag and the fix."""


def add_lora_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--lora-target-modules, --lora-r, --lora-alpha, --lora-dropout, --lora-load, --lora-ckpt-filter."""
    g = parser.add_argument_group("LoRA (docs/lora.md)")
    g.add_argument("--lora-target-modules", nargs="+", default=[], choices=LORA_TARGET_MODULES,
                   help="add LoRA adapters to these linear layers and freeze every other weight")
    g.add_argument("--lora-r", type=int, default=16, help="LoRA rank (16)")
    g.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha; the adapter is scaled by alpha / r (32)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter's input (0.0)")
    g.add_argument("--lora-load", default=None,
                   help="an adapter checkpoint (a --save folder of a LoRA run): --load gives the base weights, "
                        "this folder the adapter, optimizer, scheduler and iteration")
    g.add_argument("--lora-ckpt-filter", action="store_true",
                   help="--save writes only the adapter tensors (plus optimizer, scheduler, RNG, iteration)")
    return parser


def check_lora_flags(args: argparse.Namespace) -> None:
    """The LoRA flags against each other (--lora-* without --lora-target-modules would do nothing)."""
    if not args.lora_target_modules:
        given = [flag for flag, on in (("--lora-load", args.lora_load), ("--lora-ckpt-filter", args.lora_ckpt_filter))
                 if on]
        if given:
            raise LoraFlagError(f"{' '.join(given)} without --lora-target-modules: name the adapted layers, e.g. "
                                "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2")
        return
    if args.lora_r <= 0:
        raise LoraFlagError(f"--lora-r must be positive, got {args.lora_r}")
    if args.lora_alpha <= 0:
        raise LoraFlagError(f"--lora-alpha must be positive, got {args.lora_alpha}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise LoraFlagError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    if args.ckpt_format != "torch":
        raise LoraFlagError(f"--lora-target-modules with --ckpt-format {args.ckpt_format}: LoRA checkpoints use "
                            "the legacy layout; use --ckpt-format torch")
    if args.lora_load and not args.load:
        raise LoraFlagError(f"--lora-load {args.lora_load} needs --load BASE (the base model's checkpoint)")
    same_as_save = bool(args.save) and os.path.realpath(args.lora_load or "") == os.path.realpath(args.save)
    if args.lora_load and not os.path.isdir(args.lora_load) and not same_as_save:
        raise LoraFlagError(f"--lora-load {args.lora_load} is not a folder: give the --save folder of a LoRA run (or "
                            "the same folder as --save, to start a new adapter there and resume it on a relaunch)")
