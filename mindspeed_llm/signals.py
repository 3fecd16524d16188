"""SIGINT/SIGTERM for the command-line tools: an exception that unwinds the cleanup, then one line.

``convert_ckpt.py`` and ``preprocess_data.py`` run inside :func:`exit_on_signals`: Ctrl-C raises
``KeyboardInterrupt`` and SIGTERM raises :class:`Terminated`, so the ``except BaseException`` blocks
that remove temporary files run as for any error. After the first signal both signals are ignored,
so a second Ctrl-C cannot cut the cleanup short. Forked children ignore Ctrl-C (the parent cleans up
and ends them) and die at once on SIGTERM. :func:`signals_deferred` holds signals back while
finished files are renamed into place, so a completed output is either all old or all new.

The handler's exception is not always seen: when it runs inside Python code that C code called and whose
errors it clears (the pickler calling ``copyreg`` while ``torch.save`` writes a rank file), it is dropped
and the tool would run on to a complete output and exit 0. So the handler also records the signal, and
:func:`signals_deferred` raises a recorded one before the renames it guards.
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
_received: int | None = None  # the signal that arrived in this exit_on_signals block, if any
_deferring = 0  # depth of signals_deferred blocks: the handler records and returns instead of raising


def _handler(signum: int, frame) -> None:
    if os.getpid() != _owner_pid:
        # A forked child (tokenizer worker, --n-subs part): Ctrl-C is the parent's to handle, and SIGTERM
        # (the parent's pool.terminate()) must end it at once, whatever it is doing.
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        return
    global _received
    _received = signum
    for sig in _SIGNALS:  # cleanup must finish: later signals are ignored
        signal.signal(sig, signal.SIG_IGN)
    if not _deferring:
        _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _raise_received() -> None:
    """Raise the recorded signal, unless an exception (maybe that very signal's) is already unwinding."""
    if _received is not None and sys.exc_info()[0] is None:
        _raise(_received)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _owner_pid, _received
    nested = _owner_pid == os.getpid()  # a signal recorded in an inner block stays the outer block's to raise
    owner, _owner_pid = _owner_pid, os.getpid()
    if not nested:
        _received = None
    previous = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _owner_pid = owner
        if not nested:
            _received = None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back during the block (a short sequence of renames); they arrive after it.

    A signal that arrived earlier but whose exception was lost is raised here, before the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _deferring
    if not _deferring:
        _raise_received()
    # The mask alone is not enough: the kernel hands a process-wide signal to any thread that does not
    # block it (torch's worker threads), and Python then runs the handler in the main thread mid-block.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    _deferring += 1
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        _deferring -= 1
    if not _deferring:
        _raise_received()


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
