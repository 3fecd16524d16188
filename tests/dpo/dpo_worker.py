"""torchrun worker: posttrain_gpt.py launches as a user starts them, one after another in one process group
launch, with what their first step computed written out.

Usage: torchrun --nproc-per-node N dpo_worker.py SPEC.json OUT_DIR
SPEC: [{"name": ..., "argv": [posttrain_gpt.py flags]}, ...]. For each run, every rank writes
OUT_DIR/<name>_tp<t>_pp<p>.pt: the first step's gradients of its chunk (``main_grad``, the names of its
state dict, read after megatron-core's schedule reduced them and before the optimizer step) and, on the last
stage, the step's reported values (over the global batch, as the log line). The trainer itself is not changed:
the step is observed by wrapping the trainer's own NaN check, which runs at exactly that point.
"""

import mindspeed_llm  # noqa: F401 - first: the device layer, megatron-core imported under it

import json
import os
import runpy
import sys
import time

import torch

import mindspeed_llm.training.training as training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _observer(name: str, out_dir: str, original):
    seen = {"done": False}

    def observe(losses, model, args):
        original(losses, model, args)
        if seen["done"]:
            return
        seen["done"] = True
        from megatron.core import parallel_state as ps

        from mindspeed_llm.dpo.reference import unwrap

        grads = {}
        for chunk in model:
            for pname, p in unwrap(chunk).named_parameters():
                if p.requires_grad:
                    grads[pname] = p.main_grad.detach().float().clone()
        reported = training._reduce_losses(losses)  # noqa: SLF001 - what the log line prints (DP-reduced)
        tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        if ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0:
            torch.save({"grads": grads, "reported": reported},
                       os.path.join(out_dir, f"{name}_tp{tp}_pp{pp}.pt"))

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
            if exc.code:
                raise
        print(f"[worker] {run['name']} done", flush=True)


if __name__ == "__main__":
    main()
