"""The command-line tools' signal handling (mindspeed_llm/signals.py), in this process with real signals.

Two ways a signal used to slip past the tools, both seen in convert_ckpt.py's SIGTERM test (exit 0, a
complete new output, though the signal landed mid-write):
- the handler's exception is dropped when the handler runs inside Python code that C code called and whose
  error it discards (the pickler calling copyreg under torch.save); a ``__del__`` is the same case on demand;
- a process-wide signal is delivered to a thread that does not block it, so ``pthread_sigmask`` in the
  main thread does not hold it back and Python runs the handler in the main thread mid-rename.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from mindspeed_llm.signals import Terminated, exit_on_signals, signals_deferred


class _SignalledWhileDeleted:
    """Sends SIGTERM to this process from ``__del__``, where Python prints and drops any exception."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # bytecode for the interpreter to run the handler in, inside __del__
            pass


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # the exception __del__ dropped
def test_a_signal_whose_exception_was_dropped_stops_the_next_commit():
    renamed, before = [], signal.getsignal(signal.SIGTERM)
    with exit_on_signals():
        _SignalledWhileDeleted()  # the handler ran and its Terminated was lost: the work went on
        renamed.append("work after the signal")
        with pytest.raises(Terminated):
            with signals_deferred():
                renamed.append("commit")
    assert renamed == ["work after the signal"]  # nothing was committed after the signal
    assert signal.getsignal(signal.SIGTERM) == before  # exit_on_signals put the earlier handler back


def test_a_signal_delivered_to_another_thread_waits_for_the_end_of_the_deferred_block():
    started, release = threading.Event(), threading.Event()

    def idle_thread() -> None:  # a thread that does not block SIGTERM, as torch's worker threads
        started.set()
        release.wait(30)

    thread = threading.Thread(target=idle_thread)
    renamed = []
    with exit_on_signals():
        thread.start()
        started.wait(30)
        try:
            with pytest.raises(Terminated):
                with signals_deferred():
                    os.kill(os.getpid(), signal.SIGTERM)  # the kernel hands it to the idle thread
                    deadline = time.monotonic() + 0.3
                    while time.monotonic() < deadline:  # plenty of bytecode: the handler has run by now
                        renamed.append(len(renamed))
                    renamed.append("last rename")
        finally:
            release.set()
            thread.join()
    assert renamed[-1] == "last rename"  # the whole block ran; the signal came after it


def test_a_signal_raised_normally_is_not_raised_again_by_cleanup():
    cleaned = []
    with exit_on_signals():
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10_000):
                    pass
            except BaseException:
                with signals_deferred():  # cleanup while the signal's exception unwinds: no second raise
                    cleaned.append("removed temporaries")
                raise
    assert cleaned == ["removed temporaries"]


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # the exception __del__ dropped
def test_a_dropped_signal_of_an_inner_block_stops_the_outer_blocks_commit():
    renamed = []
    with (
        exit_on_signals()
    ):  # preprocess_data.py's command line wraps the library call, which wraps its own work
        with exit_on_signals():
            _SignalledWhileDeleted()
        with pytest.raises(Terminated):
            with signals_deferred():
                renamed.append("commit")
    assert renamed == []
