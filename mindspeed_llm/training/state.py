"""Configuration apart from run state: the frozen arguments.

The parsed flags (:class:`RunArgs`) are validated once and then frozen: assigning to them raises.
What changes while training (iteration, consumed samples, FLOPs, the random generators' states)
lives in :class:`mindspeed_llm.runtime.state.TrainState`, which checkpoints save and restore.
"""

from __future__ import annotations

import argparse


class FrozenArgsError(AttributeError):
    """An assignment to the training arguments after they were validated and frozen."""


class RunArgs(argparse.Namespace):
    """argparse's Namespace that refuses assignments once :meth:`freeze` ran."""

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenArgsError(f"training arguments are frozen after validation: cannot set {name}; "
                                  "keep run state in mindspeed_llm.runtime.state.TrainState")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenArgsError(f"training arguments are frozen after validation: cannot delete {name}")
        super().__delattr__(name)

    def freeze(self) -> RunArgs:
        """Refuse assignments from now on; returns self."""
        self.__dict__["_frozen"] = True
        return self

    @property
    def frozen(self) -> bool:
        """True once :meth:`freeze` ran."""
        return bool(self.__dict__.get("_frozen"))


def freeze_args(args: argparse.Namespace) -> argparse.Namespace:
    """Freeze ``args`` if it is a :class:`RunArgs` (a plain Namespace from a custom caller stays as it is)."""
    if isinstance(args, RunArgs):
        args.freeze()
    return args
