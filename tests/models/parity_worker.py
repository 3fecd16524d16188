"""torchrun worker: load each rank's converted file strictly into its GPTModel and compare logits with HF.

Usage: torchrun --nproc-per-node 4 parity_worker.py SPEC.json OUT_DIR
SPEC lists cases {name, mg_root, ref, tp, pp}; OUT_DIR/<name>.json gets {"max_abs_diff": ...}.
"""

import mindspeed_llm  # noqa: F401 - first: the CPU device layer, megatron-core imported under it

import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from mindspeed_llm.convert import model_config_from_args
from mindspeed_llm.runtime.checkpoint import load_rank_state
from mindspeed_llm.models import build_gpt_model, pipeline_layout


def run_case(case: dict, ids: torch.Tensor, out_dir: str) -> None:
    """One case on the model-parallel groups of its layout (initialized by the caller)."""
    pp = case["pp"]
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    state = load_rank_state(case["mg_root"], None, tp_rank, pp_rank, pp)
    args = state["args"]
    cfg = model_config_from_args(args).replace(params_dtype=torch.float32)
    overrides = {}
    if args.num_layer_list:
        overrides["pipeline_model_parallel_layout"] = pipeline_layout(
            [int(x) for x in args.num_layer_list.split(",")]
        )
    model = build_gpt_model(
        cfg,
        padded_vocab_size=args.padded_vocab_size,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=False,
        use_cpu_initialization=True,
        perform_initialization=False,
        **overrides,
    )
    model.load_state_dict(state["model"], strict=True)  # raises on any missing or unexpected key
    model.eval()
    seq = ids.shape[1]
    pos = torch.arange(seq).unsqueeze(0)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            hidden = torch.empty(seq, 1, cfg.hidden_size)
            dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        out = model(ids, pos, attention_mask=mask)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
    if ps.is_pipeline_last_stage() and tp_rank == 0 and ps.get_data_parallel_rank() == 0:
        ref = torch.load(case["ref"], weights_only=True)
        diff = (out[0, :, : cfg.vocab_size].float() - ref[0]).abs().max().item()
        with open(os.path.join(out_dir, case["name"] + ".json"), "w") as f:
            json.dump({"max_abs_diff": diff}, f)
    dist.barrier()


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    dist.init_process_group("gloo")
    ids = torch.tensor(spec["ids"])
    # The cases of one (TP, PP) layout share its groups: creating megatron's groups on gloo is most of a
    # case's time, and a case's result does not depend on the cases run before it on the same groups.
    layout = None
    for case in sorted(spec["cases"], key=lambda c: (c["tp"], c["pp"])):
        if (case["tp"], case["pp"]) != layout:
            if layout is not None:
                ps.destroy_model_parallel()
            layout = (case["tp"], case["pp"])
            ps.initialize_model_parallel(*layout)
        run_case(case, ids, out_dir)
    ps.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    main()
