"""SIGINT and SIGTERM during training.

Without ``--exit-signal-handler`` both interrupt at once: the handler raises
:class:`TrainingInterrupted`, a save in progress removes its temporary files on the way out (the
tracker still names the last complete checkpoint), and ``run_main`` prints one line and exits with
128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process a signal ended.

With ``--exit-signal-handler`` (Megatron-LM's flag) SIGTERM is only recorded; at the end of each step
the ranks ask each other whether any received it (one all-reduce), and if so the run saves a checkpoint
(when ``--save`` is given) and exits 0. SIGINT still interrupts. torchrun forwards a signal it receives
to its workers and gives them 30 s before SIGKILL; schedulers such as SLURM signal every process.
"""

from __future__ import annotations

import os
import signal

from mindspeed_llm.runtime.errors import TrainingInterrupted, any_rank


class SignalGuard:
    """Installs the handlers for one run; :meth:`restore` puts the previous ones back."""

    def __init__(self, exit_signal_handler: bool) -> None:
        self.exit_signal_handler = exit_signal_handler
        self.received: int | None = None
        self.interrupted: int | None = None
        self._owner = os.getpid()
        self._previous: dict[int, object] = {}

    def install(self) -> SignalGuard:
        """Take over SIGINT and SIGTERM in this process."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = (
                self._record if signum == signal.SIGTERM and self.exit_signal_handler else self._interrupt
            )
            self._previous[signum] = signal.signal(signum, handler)
        return self

    def restore(self) -> None:
        """Give SIGINT and SIGTERM back their previous handlers."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _interrupt(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:
            # A forked data-loader worker inherits the handler: it ends quietly, the trainer reports.
            raise KeyboardInterrupt
        self.interrupted = signum
        raise TrainingInterrupted(signum)

    def _record(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:
            raise KeyboardInterrupt
        self.received = signum

    def exit_requested(self) -> bool:
        """With --exit-signal-handler: did any rank receive SIGTERM? (collective: call on every rank)."""
        if not self.exit_signal_handler:
            return False
        return any_rank(self.received is not None)


_GUARD: SignalGuard | None = None


def install(exit_signal_handler: bool = False) -> SignalGuard:
    """Install (or reconfigure) this process's guard; entry points call it before anything else."""
    global _GUARD
    if _GUARD is not None:
        _GUARD.restore()
    _GUARD = SignalGuard(exit_signal_handler).install()
    return _GUARD


def configure(exit_signal_handler: bool) -> None:
    """From the parsed flags: --exit-signal-handler makes SIGTERM save and exit 0 (installs a guard if
    needed)."""
    if _GUARD is not None or exit_signal_handler:
        install(exit_signal_handler)


def uninstall() -> None:
    """Give the signals back to their previous handlers."""
    global _GUARD
    if _GUARD is not None:
        _GUARD.restore()
        _GUARD = None


def exit_requested() -> bool:
    """With --exit-signal-handler: did any rank receive SIGTERM? (collective; False without the flag)."""
    return _GUARD is not None and _GUARD.exit_requested()


def interrupted_by() -> int | None:
    """The signal that interrupted this process, if one did (for errors it caused on the way out)."""
    return _GUARD.interrupted if _GUARD is not None else None
