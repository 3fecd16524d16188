"""A synchronous torch_dist save starts no Manager process (mindspeed_llm/patches/sync_save.py).

megatron-core's own reader loads what the scoped save wrote; a write past a file-size limit fails with the
same error in and out of the scope; and the same save outside the scope starts megatron-core's spawn-context
Manager (what the patch removes: a new interpreter per rank, about 7.5 CPU s with an entry script's
imports, and 11 s of a TP2 save's 11.5 s in a measured run).
"""

from __future__ import annotations

from tests.helpers.launch import run_python

# The work is under the main guard: the spawn-context Manager of the unscoped save re-imports this file.
SAVE = r"""
import sys


def main():
    import contextlib
    import multiprocessing
    import os
    import resource
    import signal

    import torch
    import torch.distributed as dist

    import mindspeed_llm  # noqa: F401
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from mindspeed_llm.patches.sync_save import in_process_write_results

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
    weights = torch.arange(4096, dtype=torch.float32).reshape(64, 64)

    def state(tensor):
        return {"w": ShardedTensor.from_rank_offsets("w", tensor, replica_id=0)}

    def save(folder):
        os.makedirs(folder)
        dist_checkpointing.save(state(weights), folder, get_default_save_sharded_strategy("torch_dist"))

    with in_process_write_results():
        save("scoped")
    print("children after the scoped save:", len(multiprocessing.active_children()))
    print("megatron-core's queue after the scoped save:", filesystem_async._results_queue)
    loaded = dist_checkpointing.load(state(torch.zeros(64, 64)), "scoped")
    print("loaded equal:", torch.equal(loaded["w"], weights))

    save("unscoped")  # megatron-core's own path
    print("children after the unscoped save:", len(multiprocessing.active_children()))

    # A write past a file-size limit fails the save the same way in and out of the scope.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
    for name, scope in (("scoped", in_process_write_results), ("unscoped", contextlib.nullcontext)):
        try:
            with scope():
                save("limited_" + name)
            print(name, "limited save: no error")
        except Exception as exc:
            print(name, "limited save failed:", type(exc).__name__, exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
"""


def test_scoped_torch_dist_save_starts_no_process_and_reads_back(tmp_path):
    from tests.helpers.launch import free_port

    proc = run_python(SAVE, tmp_path, free_port())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "children after the scoped save: 0" in out
    assert "megatron-core's queue after the scoped save: None" in out
    assert "loaded equal: True" in out
    # Teeth: megatron-core's own path starts the Manager process the check above would have counted.
    assert "children after the unscoped save: 1" in out
    # A failed write reaches the caller as megatron-core's own error, the same in and out of the scope.
    failures = dict(line.split(" limited save ", 1) for line in out.splitlines() if " limited save " in line)
    assert failures["scoped"].startswith("failed: "), failures
    assert failures["scoped"] == failures["unscoped"], failures
