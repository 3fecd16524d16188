"""A launch and its checkpoint, before the model exists: does the launch fit it?

The trainer and inference ask here, after :mod:`.locate` found the iteration: :func:`read_checkpoint_record`
(this rank's view of the record), :func:`check_checkpoint_args` (the launch's model and TP/PP against
the record), ``--use-checkpoint-args`` and the padded vocabulary.
"""

from __future__ import annotations

import argparse
import logging
import os

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.detect import TORCH_DIST, detect_format
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint.layout import load_rank_file
from mindspeed_llm.runtime.checkpoint.locate import checkpoint_step as _checkpoint_step
from mindspeed_llm.runtime.checkpoint.record import (
    MODEL_SETTINGS,
    ROPE_SETTINGS,
    CheckpointRecord,
    read_header,
)

logger = logging.getLogger("mindspeed_llm.runtime.checkpoint")

# ---- what it records ---------------------------------------------------------------------------------------
def read_checkpoint_record(args: argparse.Namespace, iteration: int | str) -> tuple[CheckpointRecord, str]:
    """This rank's view of ``--load``'s record at ``iteration`` and a name for the checkpoint in messages.

    Legacy: this rank's own file (a launch on another TP/PP is named before a missing file is); torch_dist:
    ``common.pt``.
    """
    from mindspeed_llm.runtime.checkpoint import dist_format, torch_format

    if detect_format(args.load, iteration) == TORCH_DIST:
        return (dist_format.read_record(args.load, iteration),
                f"the checkpoint {args.load} (iteration {iteration}, torch_dist)")
    tp_rank, pp_rank = _model_parallel_ranks()
    ep_size = getattr(args, "expert_model_parallel_size", 1) or 1
    ep_rank = _expert_parallel_rank() if ep_size > 1 else 0
    path = layout.checkpoint_file_for(
        args.load, iteration, tp_rank, pp_rank, args.pipeline_model_parallel_size, ep_rank, ep_size
    )
    if not os.path.isfile(path):
        try:
            c_tp, c_pp = layout.parallel_sizes(args.load, iteration)
        except CheckpointError:
            c_tp = c_pp = None
        if c_tp is not None:
            check_parallel_layout(args, c_tp, c_pp, None, f"the checkpoint in {args.load}")
            recorded = _first_rank_layout(args.load, iteration)
            check_expert_layout(args, recorded.ep, recorded.etp, f"the checkpoint in {args.load}")
        raise CheckpointError(f"{path} not found: the checkpoint in {args.load} is incomplete for TP rank "
                              f"{tp_rank}, PP rank {pp_rank}")
    return torch_format.read_record(path), f"the checkpoint {args.load} (iteration {iteration})"


def _first_rank_layout(root: str, iteration: int | str):
    """The layout recorded in the first rank file of ``root`` at ``iteration``."""
    found = layout.list_rank_dirs(root, iteration)
    first = found[min(found)]
    return read_header(load_rank_file(first, mmap=True), first).layout


def _expert_parallel_rank() -> int:
    """This process's expert-parallel rank (0 before megatron's parallel state exists)."""
    from megatron.core import parallel_state as ps

    return ps.get_expert_model_parallel_rank() if ps.model_parallel_is_initialized() else 0


def _model_parallel_ranks() -> tuple[int, int]:
    """(TP rank, PP rank) of this process; (0, 0) before megatron's parallel state exists."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return 0, 0
    return ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()


# ---- does the launch fit it? -------------------------------------------------------------------------------
def _launch_setting(args: argparse.Namespace, attr: str):
    """The value this launch uses for a model setting."""
    if attr == "add_bias_linear":
        return not args.disable_bias_linear
    return getattr(args, attr, None)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # LongRoPE's factor lists
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _rope_contradictions(args: argparse.Namespace, recorded: dict) -> list[str]:
    """RoPE scaling flags given at launch that differ from the recorded scaling.

    Without ``--rope-scaling-type`` the checkpoint's scaling is used as it is (see
    ``arguments.rope_scaling_from_args``); flags left unset are completed from it.
    """
    kind = getattr(args, "rope_scaling_type", None)
    if kind is None or not any(attr in recorded for attr in ROPE_SETTINGS):
        return []
    theirs = recorded.get("rope_scaling_type")
    if kind != theirs:
        return [f"--rope-scaling-type {kind} (checkpoint: {theirs})"]
    from mindspeed_llm.models.families import ROPE_SCALING_FLAGS
    from mindspeed_llm.models.rope_scaling import says_nothing

    keys = dict(ROPE_SCALING_FLAGS)
    scaling = {keys[attr]: value for attr, value in recorded.items() if attr in keys and value is not None}
    return [
        f"--{attr.replace('_', '-')} {getattr(args, attr)} (checkpoint: {recorded.get(attr)})"
        for attr in ROPE_SETTINGS[1:]
        if getattr(args, attr) is not None and not _same(getattr(args, attr), recorded.get(attr))
        and not (recorded.get(attr) is None and says_nothing(keys[attr], getattr(args, attr), scaling))
    ]


def check_model_settings(args: argparse.Namespace, record: CheckpointRecord, where: str) -> None:
    """Refuse a launch whose model flags contradict what the checkpoint records (one line, every
    contradiction).

    A flag left at its default counts as its default (a forgotten ``--rotary-base 1000000`` is refused).
    """
    recorded = record.model.settings
    wrong = []
    for attr in MODEL_SETTINGS:
        if attr not in recorded or attr in ROPE_SETTINGS:
            continue
        mine, theirs = _launch_setting(args, attr), recorded[attr]
        if not _same(mine, theirs):
            flag = "--disable-bias-linear" if attr == "add_bias_linear" else "--" + attr.replace("_", "-")
            if attr == "add_bias_linear":
                mine, theirs = not mine, not theirs
            wrong.append(f"{flag} {mine} (checkpoint: {theirs})")
    wrong += _rope_contradictions(args, dict(recorded))
    if wrong:
        raise CheckpointError(
            f"{where} was trained with other model settings than this launch: {'; '.join(wrong)}. "
            "Pass the checkpoint's values, or --use-checkpoint-args to take them from it"
        )


def check_parallel_layout(args: argparse.Namespace, c_tp: int | None, c_pp: int | None,
                          c_list: tuple[int, ...] | None, where: str) -> None:
    """Raise if the launch's TP/PP sizes (or its --num-layer-list at PP > 1) differ from the checkpoint's."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    c_tp, c_pp = c_tp or tp, c_pp or pp
    if (c_tp, c_pp) != (tp, pp):
        raise CheckpointError(
            f"{where} was saved with TP={c_tp} PP={c_pp} but this launch has --tensor-model-parallel-size "
            f"{tp} --pipeline-model-parallel-size {pp}: launch with TP={c_tp} PP={c_pp}, or reshard it with "
            f"convert_ckpt.py --load-model-type mg --save-model-type mg --target-tensor-parallel-size {tp} "
            f"--target-pipeline-parallel-size {pp}"
        )
    recorded = ",".join(map(str, c_list)) if c_list else ""
    if recorded and pp > 1 and recorded != str(args.num_layer_list or "").replace(" ", ""):
        raise CheckpointError(f"{where} has --num-layer-list {recorded}: pass the same --num-layer-list")


def check_expert_layout(args: argparse.Namespace, c_ep: int | None, c_etp: int | None, where: str) -> None:
    """Raise if the launch's expert-parallel sizes (EP, ETP) differ from the checkpoint's: each EP rank's file
    holds only its own experts, so another EP would load the wrong experts or none."""
    ep = getattr(args, "expert_model_parallel_size", 1) or 1
    etp = getattr(args, "expert_tensor_parallel_size", None) or args.tensor_model_parallel_size
    c_ep = c_ep or 1
    c_etp = c_etp or args.tensor_model_parallel_size
    if (c_ep, c_etp) != (ep, etp):
        raise CheckpointError(
            f"{where} was saved with EP={c_ep} ETP={c_etp} but this launch has --expert-model-parallel-size "
            f"{ep} --expert-tensor-parallel-size {etp}: launch with those or reshard it with convert_ckpt.py "
            f"--load-model-type mg --save-model-type mg --target-expert-parallel-size {ep} "
            f"--expert-tensor-parallel-size {etp}"
        )


def check_checkpoint_args(args: argparse.Namespace, record: CheckpointRecord, where: str, *,
                          reshardable: bool = False) -> None:
    """Raise if the launch's model shape (or, unless ``reshardable``, its TP/PP sizes) differ from the
    record's."""
    if not reshardable:
        check_parallel_layout(args, record.layout.tp, record.layout.pp, record.layout.num_layer_list, where)
        if record.model.settings.get("num_experts"):
            check_expert_layout(args, record.layout.ep, record.layout.etp, where)
    check_model_settings(args, record, where)


def checkpoint_model_settings(ckpt_args: argparse.Namespace) -> dict:
    """The model-defining settings a checkpoint's ``args`` record (flag attribute -> value)."""
    return dict(CheckpointRecord.from_megatron_args(ckpt_args).model.settings)


def load_args_from_checkpoint(args: argparse.Namespace) -> dict:
    """--use-checkpoint-args: the model settings to take from the ``--load`` checkpoint (Megatron-LM's rules).

    Returns ``{name: value}``; ``config.validate`` sets them on the parsed flags before validation. Which
    settings, and whether the checkpoint's value replaces one the launch gave ("force") or only fills one
    it left unset ("fill"), is the settings' metadata in ``config/groups.py``. No checkpoint: nothing.
    """
    from mindspeed_llm.config.groups import checkpoint_settings

    if not args.load:
        raise CheckpointError("--use-checkpoint-args needs --load CHECKPOINT_DIR")
    if args.ckpt_step is not None:
        iteration = _checkpoint_step(args.load, args.ckpt_step)
    elif os.path.isfile(os.path.join(args.load, layout.TRACKER_FILENAME)):
        iteration = layout.read_tracker(args.load)
    else:
        logger.info("--use-checkpoint-args: no checkpoint in %s, using the launch's arguments", args.load)
        return {}
    files = layout.list_rank_dirs(args.load, iteration)
    if not files:
        raise CheckpointError(f"--load {args.load}: no mp_rank_*/{layout.MODEL_FILENAME} under "
                              f"{layout.iteration_dir_name(iteration)}")
    ckpt_args = load_rank_file(files[min(files)], mmap=True).get("args")
    if ckpt_args is None:
        logger.info("--use-checkpoint-args: %s records no args, using the launch's arguments", args.load)
        return {}
    values = dict(vars(ckpt_args))
    values.update({k: v for k, v in checkpoint_model_settings(ckpt_args).items() if k not in values})
    if "add_bias_linear" in values:
        values["disable_bias_linear"] = not values["add_bias_linear"]
    fill = checkpoint_settings("fill")
    taken = {}
    for name in (*fill, *checkpoint_settings("force")):
        if values.get(name) is None or (name in fill and getattr(args, name, None) is not None):
            continue
        taken[name] = values[name]
    if taken:
        logger.info(
            "--use-checkpoint-args: from %s: %s", args.load, ", ".join(f"{n}={v}" for n, v in taken.items())
        )
    return taken


def adopt_padded_vocab(args: argparse.Namespace, ckpt_args: argparse.Namespace, tokenizer_vocab: int,
                       where: str) -> int | None:
    """The checkpoint's padded vocabulary size for the run (None: not recorded), or name the flag to pass."""
    padded = getattr(ckpt_args, "padded_vocab_size", None)
    if padded is None:
        return None
    if args.padded_vocab_size is not None and args.padded_vocab_size != padded:
        raise CheckpointError(
            f"{where} has a padded vocabulary of {padded} rows but --padded-vocab-size is "
            f"{args.padded_vocab_size}: pass --padded-vocab-size {padded} (or drop the flag)"
        )
    if tokenizer_vocab > padded:
        raise CheckpointError(f"the tokenizer has {tokenizer_vocab} tokens but {where}'s embedding has only "
                              f"{padded} rows: use the tokenizer the checkpoint was converted with")
    return padded
