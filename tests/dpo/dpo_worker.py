"""torchrun worker: posttrain_gpt.py launches as a user starts them, one after another in one process group
launch, with what their first step computed written out.

Usage: torchrun --nproc-per-node N dpo_worker.py SPEC.json OUT_DIR
SPEC: [{"name": ..., "argv": [posttrain_gpt.py flags], "expect_failure": bool}, ...] (a run expected to stop
with its one-line error). For each run, every rank writes
OUT_DIR/<name>_tp<t>_pp<p>.pt: the first step's gradients of its chunk (``main_grad``, the names of its
state dict, read after megatron-core's schedule reduced them and before the optimizer step) and, on the last
stage, each step's reported values (over the global batch, as the log line: ``reported`` the first step's,
``steps`` {iteration: values}). The trainer itself is not changed:
the step is observed by wrapping the trainer's own NaN check, which runs at exactly that point.
"""

import json
import os
import runpy
import sys
import time

import torch

import mindspeed_llm  # noqa: F401 - first: the device layer, megatron-core imported under it
import mindspeed_llm.training.training as training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _observer(name: str, out_dir: str, original):
    steps: dict[int, dict] = {}

    def observe(losses, model, args):
        original(losses, model, args)
        from megatron.core import parallel_state as ps

        from mindspeed_llm.dpo.reference import unwrap
        from mindspeed_llm.runtime import run

        first = not steps
        steps[run.iteration_in_progress()] = training._reduce_losses(losses)  # noqa: SLF001 - the log's values
        grads = {}
        if first:
            for chunk in model:
                for pname, p in unwrap(chunk).named_parameters():
                    if p.requires_grad:
                        grads[pname] = p.main_grad.detach().float().clone()
        tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        path = os.path.join(out_dir, f"{name}_tp{tp}_pp{pp}.pt")
        if ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0:
            if not first:
                grads = torch.load(path, weights_only=True)["grads"]
            torch.save({"grads": grads, "reported": steps[min(steps)], "steps": dict(steps)}, path)

    return observe


def _ports(out_dir: str, count: int) -> list[int]:
    """One free port per run, chosen by rank 0 and read by the others from OUT_DIR/ports.json."""
    path = os.path.join(out_dir, "ports.json")
    if int(os.environ.get("RANK", 0)) == 0:
        from tests.helpers.launch import free_port

        ports = [int(os.environ["MASTER_PORT"])] + [free_port() for _ in range(count - 1)]
        with open(path + ".tmp", "w") as f:
            json.dump(ports, f)
        os.replace(path + ".tmp", path)
        return ports
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written by rank 0")
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        runs = json.load(f)
    original = training.check_loss_and_grads_finite
    ports = _ports(out_dir, len(runs))
    for run, port in zip(runs, ports):
        # A fresh rendezvous store per run: the last run's store still holds its ranks' gloo addresses.
        os.environ["MASTER_PORT"] = str(port)
        training.check_loss_and_grads_finite = _observer(run["name"], out_dir, original)
        sys.argv = ["posttrain_gpt.py", *run["argv"]]
        try:
            runpy.run_path(os.path.join(REPO, "posttrain_gpt.py"), run_name="__main__")
        except SystemExit as exc:
            if exc.code and not run.get("expect_failure"):
                raise
            if exc.code:  # the trainer stopped with its line: leave no process groups behind for the next run
                from megatron.core import parallel_state as ps

                ps.destroy_model_parallel()
        print(f"[worker] {run['name']} done", flush=True)


if __name__ == "__main__":
    main()
