"""The tokenizer pool's shared pieces (mindspeed_llm/data/pool.py): stopping a pool whose terminate()
hangs."""

from __future__ import annotations

import multiprocessing as mp
import time

from mindspeed_llm.data.pool import stop_pool


def _square(x: int) -> int:
    return x * x


def test_stop_pool_ends_the_workers_when_terminate_waits_on_a_held_lock():
    """python/cpython#96995: terminate() blocks on the result queue's lock when a killed worker held it. The
    lock is held here by the test instead; stop_pool still ends every worker within its wait."""
    pool = mp.get_context("fork").Pool(2)
    assert pool.apply_async(_square, (3,)).get(timeout=60) == 9
    workers = list(pool._pool)
    lock = pool._outqueue._wlock
    lock.acquire()  # as a worker ended inside outqueue.put would leave it
    try:
        start = time.monotonic()
        stop_pool(pool, wait=1.0)
        assert time.monotonic() - start < 30
        assert all(worker.exitcode is not None for worker in workers)
    finally:
        lock.release()  # the pool's own stopping thread then finishes


def test_stop_pool_ends_a_busy_pool():
    pool = mp.get_context("fork").Pool(2)
    pending = [pool.apply_async(time.sleep, (30,)) for _ in range(4)]
    workers = list(pool._pool)
    start = time.monotonic()
    stop_pool(pool)
    assert time.monotonic() - start < 15
    assert all(worker.exitcode is not None for worker in workers) and not any(p.ready() for p in pending)


def test_worker_plan_keeps_processes_times_threads_within_the_cores():
    """--workers N on C usable cores: min(N, C) processes, each with C // processes tokenizer threads."""
    from mindspeed_llm.data.pool import plan_workers

    cases = {(1, 2): (1, 2), (2, 2): (2, 1), (64, 2): (2, 1), (3, 8): (3, 2), (1, 1): (1, 1), (8, 64): (8, 8)}
    for (workers, cpus), (processes, threads) in cases.items():
        plan = plan_workers(workers, cpus)
        assert (plan.processes, plan.threads) == (processes, threads), (workers, cpus, plan)
        assert plan.processes * plan.threads <= cpus
    assert "--workers 64 is more than the cores" in plan_workers(64, 2).describe()
    assert "more than" not in plan_workers(2, 2).describe()
