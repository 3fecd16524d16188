"""The one place that derives Megatron's flat ``args`` namespace from the run's configuration and plan.

Why a namespace at all: Megatron-LM's contract is ``get_args()`` returning one flat namespace with its
flag names (``args.num_layers``, ``args.data_parallel_size``, ``args.padded_vocab_size``, ...), and
readers keep to it: Megatron-LM's own scripts and a custom trainer in its shape, the training loop,
the data pipeline, and the checkpoints, which record the namespace (Megatron-LM reads ours back,
``convert_ckpt.py`` rebuilds the HF config from its ``hf_config``). The truth is the typed
configuration (``config/groups.py``) and the plan (``config/plan.py``); the namespace is a view of
both, built here and nowhere else, and frozen from birth: nothing writes back into it.

Before the plan exists (between start-up and the model setup) the namespace holds the flags alone;
``build_namespace(config, plan)`` then adds the plan's values, under the names Megatron-LM gives them,
the plan's value winning where a flag has the same name (``padded_vocab_size``: the flag asks, the
plan has the run's).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from typing import Any

from mindspeed_llm.config.groups import RunConfig


class FrozenArgsError(AttributeError):
    """An assignment to the run's namespace, which is derived and frozen."""


class RunArgs(argparse.Namespace):
    """argparse's Namespace, frozen from birth: assigning or deleting an attribute raises."""

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.__dict__["_frozen"] = True

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenArgsError(
                f"the run's arguments are derived from its configuration and plan and frozen: "
                f"cannot set {name}; keep run state in mindspeed_llm.runtime.state.TrainState, "
                "derived values in mindspeed_llm.config.plan.RunPlan"
            )
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenArgsError(f"the run's arguments are frozen: cannot delete {name}")
        super().__delattr__(name)

    @property
    def frozen(self) -> bool:
        """True (always, once constructed)."""
        return bool(self.__dict__.get("_frozen"))


def thawed(value: Any) -> Any:
    """A frozen value as Megatron's namespace holds it: tuples as lists, read-only mappings as dicts."""
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    if isinstance(value, (types.MappingProxyType, Mapping)):
        return {k: thawed(v) for k, v in value.items()}
    return value


def build_namespace(config: RunConfig, plan: Any = None) -> RunArgs:
    """Megatron's namespace: every flag of ``config``, then (when given) the plan's derived values."""
    values = config.values()
    if plan is not None:
        values.update(plan.namespace_values())
    return RunArgs(**{name: thawed(value) for name, value in values.items()})


def public_items(args: argparse.Namespace) -> dict:
    """The namespace as a dict, without the freeze marker."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}
