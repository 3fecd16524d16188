"""Typed errors of a training run, and how the ranks agree that one of them happened.

Each error is one line for the user (the path or flag, what is wrong, the fix); ``run_main`` prints it
as ``error: ...`` and exits 1 (inference.py, a tool: 2; ``TrainingInterrupted``: 128 + the signal
number). Bad flags are ``ArgumentError`` (config/flags.py) and unreadable checkpoints ``CheckpointError``
(runtime/checkpoint/errors.py); the classes here cover the rest.

A rank that fails alone would leave the others waiting in the next collective until the process
group's timeout. :func:`fail_together` makes a failure collective: every rank reaches one all-reduce,
the ranks that failed raise their own error (``run_main`` prints it once through the process group's
store, with ``[rank N]`` when only some ranks found it), the others raise :class:`PeerFailed`, which
waits for that line and exits with the same status without one of its own, so the user reads the culprit
once.
"""

from __future__ import annotations

import contextlib
import signal

import torch


class DataError(ValueError):
    """Training data that cannot be trained on (empty, .bin/.idx mismatch, ids beyond the vocabulary)."""


class SaveError(OSError):
    """A checkpoint (or the --save folder) that cannot be written; the last complete checkpoint stays."""


class NonFiniteError(ArithmeticError):
    """NaN/Inf in the loss, the gradients or the weights to be saved."""


class PeerFailed(RuntimeError):
    """Another rank failed; it prints why (``messages``: what the failing ranks raised), this rank exits with
    the same status (1, 2 from inference.py)."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("another rank failed: " + (messages[0] if messages else "?"))


class TrainingInterrupted(BaseException):
    """SIGINT/SIGTERM without --exit-signal-handler (a BaseException, as KeyboardInterrupt is)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """128 + signal number, what a shell reports for a process the signal ended (130 for Ctrl-C)."""
        return 128 + self.signum


# Errors a rank may hit on its own (its file, its write, its loss); anything else is a bug and keeps its
# traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, SaveError, NonFiniteError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from mindspeed_llm.config.flags import ArgumentError
    from mindspeed_llm.runtime.checkpoint.errors import CheckpointError

    return (*USER_ERRORS, ArgumentError, CheckpointError)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (an all-reduce; a no-op without a group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _gather_messages(message: str | None) -> list[str]:
    """The error messages of every rank that failed (one all-gather; only this rank's without a group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [message] if message else []
    if not any_rank(message is not None):  # the common case stays one small all-reduce
        return []
    found: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(found, message)
    return [m for m in found if m]


@contextlib.contextmanager
def fail_together():
    """Run a block on every rank; if it raised a user error on any rank, raise on all (see the module doc).

    The block must not start a collective after the point where one rank may fail, or the others wait
    for it in that collective instead of here.
    """
    error: BaseException | None = None
    try:
        yield
    except _user_errors() as exc:
        error = exc
    messages = _gather_messages(str(error) if error is not None else None)
    if error is not None:
        raise error
    if messages:
        raise PeerFailed(messages)
