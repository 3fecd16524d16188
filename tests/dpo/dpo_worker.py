"""torchrun worker: posttrain_gpt.py launches as a user starts them, one after another in one process group
launch, with what their first step computed written out.

Usage: torchrun --nproc-per-node N dpo_worker.py SPEC.json OUT_DIR
SPEC: [{"name": ..., "argv": [posttrain_gpt.py flags]}, ...]. For each run, every rank writes
OUT_DIR/<name>_tp<t>_pp<p>.pt: the first step's gradients of its chunk (``main_grad``, the names of its
state dict, read after megatron-core's schedule reduced them and before the optimizer step) and, on the last
stage, the step's reported values (sum / count over its micro-batches). The trainer itself is not changed:
the step is observed by wrapping the trainer's own NaN check, which runs at exactly that point.
"""

import mindspeed_llm  # noqa: F401 - first: the device layer, megatron-core imported under it

import json
import os
import runpy
import sys

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
        reported = {}
        for key in (losses[0] if losses else {}):
            pair = torch.stack([d[key].detach().double().view(-1) for d in losses]).sum(dim=0)
            reported[key] = float(pair[0] / pair[1])
        tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        if ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0:
            torch.save({"grads": grads, "reported": reported},
                       os.path.join(out_dir, f"{name}_tp{tp}_pp{pp}.pt"))

    return observe


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        runs = json.load(f)
    original = training.check_loss_and_grads_finite
    for run in runs:
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
