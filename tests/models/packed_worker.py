"""Packed-sample logits of our GPTModel (converted checkpoint, one process or a torchrun rank).

Usage: torchrun --nproc-per-node 2 packed_worker.py SPEC.json OUT_DIR
SPEC: {"ids": [[...]], "position_ids": [[...]], "cases": [{name, mg_root, tp, pp, sequence_parallel, flash}]};
OUT_DIR/<name>.pt gets the full-vocabulary logits [b, s, v] (last stage, TP rank 0).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

import mindspeed_llm  # noqa: F401  (CPU device layer and base patches)
from mindspeed_llm.convert import model_config_from_args
from mindspeed_llm.models import build_gpt_model
from mindspeed_llm.ops.packing import document_packed_seq_params
from mindspeed_llm.patches import features
from mindspeed_llm.runtime.checkpoint import load_rank_state


def packed_logits(mg_root: str, ids: torch.Tensor, position_ids: torch.Tensor, *, flash: bool = False,
                  sequence_parallel: bool = False) -> torch.Tensor | None:
    """Logits of this rank's model on a packed batch (None off the last pipeline stage); parallel state set
    up.

    ``flash``: with ``--use-flash-attn`` and ``--use-fused-rotary-pos-emb``'s patches (else megatron's own).
    """
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp = ps.get_pipeline_model_parallel_world_size()
    state = load_rank_state(mg_root, None, tp_rank, pp_rank, pp)
    args = state["args"]
    cfg = model_config_from_args(args).replace(params_dtype=torch.float32)
    features.enable_feature_patches(use_flash_attn=flash, use_fused_rotary_pos_emb=flash)
    try:
        model = build_gpt_model(
            cfg,
            padded_vocab_size=args.padded_vocab_size,
            pre_process=ps.is_pipeline_first_stage(),
            post_process=ps.is_pipeline_last_stage(),
            parallel_output=False,
            use_cpu_initialization=True,
            perform_initialization=False,
            sequence_parallel=sequence_parallel,
        )
        model.load_state_dict(state["model"], strict=True)
        model.eval()
        psp = document_packed_seq_params(position_ids)
        b, s = ids.shape
        with torch.no_grad():
            if not ps.is_pipeline_first_stage():
                local_s = s // (ps.get_tensor_model_parallel_world_size() if sequence_parallel else 1)
                hidden = torch.empty(local_s, b, cfg.hidden_size)
                dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
                model.set_input_tensor(hidden)
            out = model(ids, position_ids, None, packed_seq_params=psp)
            if not ps.is_pipeline_last_stage():
                dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
                return None
        return out
    finally:
        features.disable_feature_patches()


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    dist.init_process_group("gloo")
    ids, position_ids = torch.tensor(spec["ids"]), torch.tensor(spec["position_ids"])
    for case in spec["cases"]:
        ps.initialize_model_parallel(case["tp"], case["pp"])
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        out = packed_logits(case["mg_root"], ids, position_ids, flash=case["flash"],
                            sequence_parallel=case["sequence_parallel"])
        if out is not None and ps.get_tensor_model_parallel_rank() == 0:
            torch.save(out, os.path.join(out_dir, case["name"] + ".pt"))
        dist.barrier()
        ps.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
