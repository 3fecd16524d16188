"""SIGINT/SIGTERM for the command-line tools: an exception that unwinds the cleanup, then one line.

``convert_ckpt.py`` and ``preprocess_data.py`` run inside :func:`exit_on_signals`: Ctrl-C raises
``KeyboardInterrupt`` and SIGTERM raises :class:`Terminated`, so the ``except BaseException`` blocks
that remove temporary files run as for any error. After the first signal both signals are ignored,
so a second Ctrl-C cannot cut the cleanup short. Forked children ignore Ctrl-C (the parent cleans up
and ends them) and die at once on SIGTERM. :func:`signals_deferred` holds signals back while
finished files are renamed into place, so a completed output is either all old or all new.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` does not eat it)."""


_owner_pid: int | None = None


def _handler(signum: int, frame) -> None:
    if os.getpid() != _owner_pid:
        # A forked child (tokenizer worker, --n-subs part): Ctrl-C is the parent's to handle, and SIGTERM
        # (the parent's pool.terminate()) must end it at once, whatever it is doing.
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        return
    for sig in _SIGNALS:  # cleanup must finish: later signals are ignored
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _owner_pid
    owner, _owner_pid = _owner_pid, os.getpid()
    previous = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _owner_pid = owner


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back during the block (a short sequence of renames); they arrive after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def exit_status(exc: BaseException) -> int:
    """Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


_PR_SET_PDEATHSIG = 1


def worker_signals() -> None:
    """In a worker process: Ctrl-C is the parent's to handle; SIGTERM (from the parent) ends it quietly.

    On Linux the worker also gets SIGTERM when its parent dies (kill -9 of the tool), so no orphan is left
    waiting on a queue nobody writes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
