"""The tokenizer pool and the bookkeeping that plain and instruction preprocessing share: the pool's start
method, its results in task order, stopping it on an error, the progress counts, and committing the
finished datasets together.

:mod:`mindspeed_llm.data.preprocess` (``--handler-name`` of a text handler, ``--n-subs``, merging) and
:mod:`mindspeed_llm.data.instruction` (the instruction handlers) both build on this module.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mindspeed_llm.data.indexed_writer import IndexedDatasetWriter
from mindspeed_llm.signals import signals_deferred


@dataclass
class Progress:
    """Counts for the --log-interval lines and the final summary."""

    log_interval: int
    start: float = 0.0
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    skipped: int = 0
    _next_log: int = 0
    nonempty: dict[str, int] = field(default_factory=dict)  # key -> documents whose text is not empty
    key_tokens: dict[str, int] = field(default_factory=dict)  # key -> tokens written

    def __post_init__(self) -> None:
        self.start = time.perf_counter()
        self._next_log = self.log_interval

    def add_counts(self, nonempty: dict[str, int], key_tokens: dict[str, int]) -> None:
        """Add another part's per-key counts (``--n-subs``)."""
        for key, n in nonempty.items():
            self.nonempty[key] = self.nonempty.get(key, 0) + n
        for key, n in key_tokens.items():
            self.key_tokens[key] = self.key_tokens.get(key, 0) + n

    def rates(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return (
            f"{self.documents / elapsed:.0f} docs/s, {self.tokens / elapsed:.0f} tokens/s, "
            f"{self.input_bytes / elapsed / 2**20:.2f} MB/s"
        )

    def update(self, documents: int, tokens: int, input_bytes: int, write) -> None:
        self.documents += documents
        self.tokens += tokens
        self.input_bytes += input_bytes
        if self.documents >= self._next_log:
            self._next_log = (self.documents // self.log_interval + 1) * self.log_interval
            write(f"processed {self.documents} documents ({self.rates()})")


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroups' cpusets), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerPlan:
    """How many tokenizer processes, and how many threads each may use: together at most ``cpus``."""

    processes: int
    threads: int
    cpus: int
    requested: int

    def describe(self) -> str:
        line = (f"tokenizing with {self.processes} worker process(es) x {self.threads} tokenizer thread(s) "
                f"on {self.cpus} usable core(s)")
        if self.requested > self.processes:
            line += (f" (--workers {self.requested} is more than the cores this process may use: more "
                     "processes would only take turns on them)")
        return line


def plan_workers(requested: int, cpus: int | None = None) -> WorkerPlan:
    """``--workers`` capped at the usable cores; the cores left over go to each process's tokenizer threads
    (``tokenizers`` parallelises a batch over its own thread pool), so that processes x threads <= cores."""
    cpus = usable_cpus() if cpus is None else max(1, cpus)
    processes = max(1, min(requested, cpus))
    return WorkerPlan(processes=processes, threads=max(1, cpus // processes), cpus=cpus, requested=requested)


def limit_tokenizer_threads(threads: int) -> None:
    """In a worker, before its tokenizer's first batch: ``tokenizers`` may use ``threads`` threads (its
    thread pool starts on first use, sized by RAYON_NUM_THREADS); with one, none of its own."""
    if threads <= 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        os.environ["RAYON_NUM_THREADS"] = str(threads)


def ordered_results(
    pool, tasks: Iterable, max_pending: int, fn: Callable,
    before_first_wait: Callable[[], object] | None = None, first_pending: int | None = None,
) -> Iterator:
    """pool.apply_async(fn) over tasks, results in task order, at most max_pending in flight.

    ``before_first_wait``: called once, when the first tasks are handed out and before waiting for a result
    (work for the main process that can overlap with the workers'); ``first_pending`` (at least
    ``max_pending``): how many tasks to hand out before it, so that the workers have work for its duration."""
    pending: deque = deque()
    limit = max(max_pending, first_pending or 0) if before_first_wait is not None else max_pending
    for task, meta in tasks:
        pending.append((pool.apply_async(fn, (task,)), meta))
        if len(pending) >= limit and before_first_wait is not None:
            before_first_wait()
            before_first_wait = None
            limit = max_pending
        while len(pending) >= limit:
            result, meta = pending.popleft()
            yield result.get(), meta
    if before_first_wait is not None:
        before_first_wait()
    while pending:
        result, meta = pending.popleft()
        yield result.get(), meta


def mp_context() -> mp.context.BaseContext:
    """fork while this process runs no other Python thread, else forkserver (spawn where neither exists).

    fork: workers inherit the loaded tokenizer and the imported modules. With another Python thread running
    (a test runner's, tqdm's monitor), the fork copies whatever interpreter-level lock that thread holds at
    that instant and a worker can wait on it forever (seen under pytest-xdist); the fork server is one
    single-threaded process that imports this package once, and its workers load the tokenizer by path.
    """
    methods = mp.get_all_start_methods()
    # Every thread that runs Python code, also those started without `threading` (execnet's, under xdist).
    if "fork" in methods and len(sys._current_frames()) == 1:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # transformers' tokenizer modules too: imported in the server once, not in every worker of every pool
        # (2.4 s each); a name this transformers lacks is skipped (the server ignores ImportError).
        ctx.set_forkserver_preload(["mindspeed_llm.data.preprocess", "mindspeed_llm.data.instruction",
                                    "transformers.models.auto.tokenization_auto",
                                    "transformers.tokenization_utils_tokenizers",
                                    "transformers.tokenization_utils_fast"])
        return ctx
    return mp.get_context("spawn")


# How long stop_pool waits for the pool's own threads once the workers are told to end (a few ms as a rule).
STOP_WAIT_S = 10.0


def stop_pool(pool: multiprocessing.pool.Pool, wait: float = STOP_WAIT_S) -> None:
    """End the pool's workers now (an error or a signal stops the run), waiting at most ``wait`` seconds.

    ``Pool.terminate()`` can wait forever (python/cpython#96995): it ends the workers before its task thread
    puts its last message on the result queue, and a worker ended while it held that queue's lock leaves the
    lock held (a full-disk test hung there about one run in four on a loaded machine). So terminate runs in
    a thread of its own; past ``wait`` the workers are ended here and the pool's (daemon) threads are left.
    """
    workers = list(pool._pool)  # noqa: SLF001 (the worker processes terminate() ends)
    stopper = threading.Thread(target=pool.terminate, name="stop-pool", daemon=True)
    stopper.start()
    stopper.join(wait)
    if not stopper.is_alive():
        pool.join()
        return
    for worker in workers:
        if worker.exitcode is None:
            worker.terminate()
    for worker in workers:
        worker.join()


def commit_all(writers: Iterable[IndexedDatasetWriter]) -> None:
    """Write every index, then rename all datasets into place together (signals held back meanwhile)."""
    writers = list(writers)
    for writer in writers:
        writer.prepare()
    with signals_deferred():
        for writer in writers:
            writer.commit()
