"""Launches as the entry points see them, without a process group: validated flags, typed config, plan."""

from __future__ import annotations

import argparse

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.plan import RunPlan
from mindspeed_llm.config.validate import validate_args


def validated(argv: list[str] | str, world: int = 1) -> argparse.Namespace:
    """The training parser's flags, validated for a world of ``world`` processes."""
    return validate_args(parse_args(argv.split() if isinstance(argv, str) else list(argv)), world)


def plan_for(
    args: argparse.Namespace, world: int = 1, vocab_rows: int = 128, base=None
) -> tuple[RunConfig, RunPlan]:
    """(config, plan) of validated flags as rank 0 on the CPU would build them (``base``: a checkpoint's
    config)."""
    config = RunConfig.from_args(args)
    model = config.model.model_config(vocab_rows, config.precision.params_dtype, base)
    return config, RunPlan.build(config, world_size=world, rank=0, device="cpu", model_config=model,
                                 padded_vocab_size=vocab_rows)
