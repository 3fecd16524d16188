"""The one record of this process's run, and what Megatron-shaped entry scripts and providers read from it.

``initialize_megatron`` starts it (the configuration, the flags given, the namespace of the flags);
``runtime.model.plan_run`` settles it (tokenizer, plan, and the namespace of configuration and plan);
the training loop notes the iteration in progress for messages. Megatron-LM keeps the same things in
module globals (``get_args()``, ``get_tokenizer()``); here they are one record, read through the
functions below and replaced only by the runtime's own steps.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.namespace import build_namespace
from mindspeed_llm.config.plan import RunPlan


@dataclass
class _Run:
    config: RunConfig | None = None
    given: frozenset[str] = field(default_factory=frozenset)
    args: argparse.Namespace | None = None
    tokenizer: Any = None
    plan: RunPlan | None = None
    step: int | None = None


_RUN = _Run()


def start(config: RunConfig, given: set[str], args: argparse.Namespace) -> None:
    """A new run of ``config``: ``given`` are the flags on the command line, ``args`` the namespace of the
    flags."""
    global _RUN
    _RUN = _Run(config=config, given=frozenset(given), args=args)


def settle(plan: RunPlan, tokenizer: Any) -> argparse.Namespace:
    """The run's plan and tokenizer are known; returns the namespace of configuration and plan."""
    if _RUN.config is None:
        raise RuntimeError("the run is not started: call initialize_megatron() first")
    _RUN.plan, _RUN.tokenizer = plan, tokenizer
    _RUN.args = build_namespace(_RUN.config, plan)
    return _RUN.args


def note_step(iteration: int) -> None:
    """The iteration being trained (or saved) now, for messages."""
    _RUN.step = iteration


def get_args() -> argparse.Namespace:
    """Megatron's namespace of this run: the flags, and the plan's values once the model is set up."""
    if _RUN.args is None:
        raise RuntimeError("training arguments are not initialised: call initialize_megatron() first")
    return _RUN.args


def get_config() -> RunConfig:
    """The typed configuration of this run."""
    if _RUN.config is None:
        raise RuntimeError("the run is not started: call initialize_megatron() first")
    return _RUN.config


def get_plan() -> RunPlan:
    """The plan of this run (after the model setup)."""
    if _RUN.plan is None:
        raise RuntimeError(
            "the run's plan is not built yet: it follows the tokenizer and the --load checkpoint"
        )
    return _RUN.plan


def launch_flags() -> frozenset[str]:
    """Argument names written on this launch's command line (the others are defaults)."""
    return _RUN.given


def get_tokenizer():
    """The tokenizer of this run (for dataset providers)."""
    return _RUN.tokenizer


def get_model_config():
    """Our ``ModelConfig`` of this run (for model providers): the plan's."""
    return get_plan().model_config


def iteration_in_progress() -> int | None:
    """The iteration being trained (or saved) now; None before the training loop."""
    return _RUN.step
