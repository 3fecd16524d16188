"""Which checkpoint a launch means: ``--load``, ``--ckpt-step``, auto-resume (``--load`` == ``--save``).

``--lora-load``'s adapter checkpoint is the LoRA feature's (``mindspeed_llm.lora.checkpoint``).
"""

from __future__ import annotations

import argparse
import os

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError


def same_folder(a: str | None, b: str | None) -> bool:
    """True when two paths name the same folder (existing or not)."""
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def last_complete_checkpoint(save: str | None) -> str:
    """``iteration N in SAVE`` as the tracker names it, for messages about what is kept."""
    if not save:
        return "no checkpoint (no --save)"
    try:
        return f"iteration {layout.read_tracker(save)} in {save}"
    except CheckpointError:
        return f"no complete checkpoint in {save}"


# ---- which checkpoint --------------------------------------------------------------------------------------
def find_checkpoint(args: argparse.Namespace) -> int | str | None:
    """The tracker's iteration under ``--load``; None for a fresh start (only when --load == --save)."""
    load = args.load
    if not load:
        return None
    if getattr(args, "ckpt_step", None) is not None:
        return checkpoint_step(load, args.ckpt_step)
    tracker = os.path.join(load, layout.TRACKER_FILENAME)
    if os.path.isfile(tracker):
        return layout.read_tracker(load)
    if same_folder(load, args.save) and not getattr(args, "exit_on_missing_checkpoint", False):
        return None
    if not os.path.isdir(load):
        raise CheckpointError(
            f"--load {load}: the folder does not exist. Expected a Megatron checkpoint folder holding "
            f"{layout.TRACKER_FILENAME} and iter_XXXXXXX/ (convert_ckpt.py --save-dir, or a training "
            "--save); to start from random weights drop --load, or pass the same folder as --save to "
            "auto-resume"
        )
    present = ", ".join(sorted(os.listdir(load))[:8]) or "nothing"
    raise CheckpointError(
        f"--load {load}: no checkpoint there ({layout.TRACKER_FILENAME} missing; the folder holds "
        f"{present}). Expected the folder that convert_ckpt.py --save-dir or a training --save wrote"
    )


def checkpoint_step(load: str, step: int) -> int:
    """--ckpt-step: that iteration's folder instead of the tracker's (as Megatron-LM)."""
    folder = os.path.join(load, layout.iteration_dir_name(step))
    if not os.path.isdir(folder):
        have = sorted(d for d in os.listdir(load) if d.startswith("iter_")) if os.path.isdir(load) else []
        raise CheckpointError(
            f"--ckpt-step {step}: {folder} does not exist (there: {', '.join(have) or 'nothing'}); "
            "pass one of those iterations or drop --ckpt-step"
        )
    return step
