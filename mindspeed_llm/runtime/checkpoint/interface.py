"""Read, load and save a checkpoint whatever its format: the calls the trainer, inference and the converter
make.

The format is never taken from a flag when reading: :func:`~.detect.detect_format` says what the folder
holds (``--ckpt-format`` picks only what a save writes), so either format resumes and a Megatron-LM
checkpoint loads.
"""

from __future__ import annotations

import argparse
import logging

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.detect import FORMATS, TORCH, detect_format
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, plain_args
from mindspeed_llm.runtime.state import TrainState

logger = logging.getLogger("mindspeed_llm.runtime.checkpoint")


def read_record(root: str, iteration: int | str | None = None) -> CheckpointRecord:
    """The record of ``root``'s checkpoint at ``iteration`` (default: the tracker's), in either format.

    The torch format's is read from its first rank file (every rank file holds the same record).
    """
    fmt = detect_format(root, iteration)
    if fmt is None:
        raise CheckpointError(
            f"{root} holds no {layout.TRACKER_FILENAME}: it is not a Megatron checkpoint folder "
            "(expected the folder that convert_ckpt.py --save-dir or a training --save wrote)"
        )
    iteration = layout.read_tracker(root) if iteration is None else iteration
    if fmt == TORCH:
        files = layout.list_rank_dirs(root, iteration)
        if not files:
            raise CheckpointError(
                f"no mp_rank_*/{layout.MODEL_FILENAME} under {layout.iteration_dir(root, iteration)}"
            )
        return FORMATS[TORCH].read_record(files[min(files)])
    return FORMATS[fmt].read_record(root, iteration)


def load(
    model: list, optimizer, scheduler, args: argparse.Namespace, iteration: int | str | None
) -> TrainState:
    """Load ``--load`` at ``iteration`` into the model chunks (and optimizer, scheduler unless None or
    ``--no-load-optim``); returns the run's state with its RNG states restored into the generators.

    ``iteration`` None (``find_checkpoint`` found none: --load is the --save folder) starts from scratch.
    Inference passes ``optimizer=None`` with ``--no-load-optim --no-load-rng``: weights only.
    """
    if iteration is None:
        if args.load:
            logger.info(
                "no checkpoint in %s yet (--load is the --save folder): starting from scratch", args.load
            )
        return TrainState()
    state = FORMATS[detect_format(args.load, iteration)].load(model, optimizer, scheduler, args, iteration)
    state.count_older_checkpoint(args)
    if state.rng is not None:
        state.restore_rng()
    return state


def save(state: TrainState, model: list, optimizer, scheduler, args: argparse.Namespace) -> CheckpointRecord:
    """Save the run at ``state.iteration`` under ``--save`` in ``--ckpt-format`` (collective); its record.

    The record is the run's (model settings, layout, LoRA from ``args``; progress from ``state``); the
    files' Megatron ``args`` are the run's plain arguments with the record's values. ``state.rng`` is
    saved as this rank's RNG states (None: none saved).
    """
    record = CheckpointRecord.from_megatron_args(args).replace(progress=state.progress())
    FORMATS[args.ckpt_format].save(state, record, plain_args(args), model, optimizer, scheduler, args)
    return record
