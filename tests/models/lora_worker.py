"""torchrun worker for the LoRA tests: our GPTModel with adapters at a TP/PP layout, loss + gradients or
logits.

Usage: torchrun --nproc-per-node 2 lora_worker.py SPEC.json OUT_DIR
SPEC: {"ids": [[...]], "cases": [{name, kind: "grads"|"logits", mg_root, tp, pp, adapter_root?}]}.
"grads": one training micro-batch through megatron-core's schedule, DDP and optimizer built as the trainer
does; every rank writes OUT_DIR/<name>_tp<t>_pp<p>.pt with its local LoRA gradients (global layer numbers),
the loss (last stage), and what DDP and the optimizer hold. "logits": TP rank 0 of the last stage writes
the full logits of ``ids``.
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
from mindspeed_llm.lora import LoraConfig, apply_lora, is_lora_key
from mindspeed_llm.runtime.checkpoint import load_rank_state
from mindspeed_llm.models import build_gpt_model


def build(case: dict):
    """The model chunk of this rank with adapters, weights loaded strictly (base + adapter)."""
    tp_rank, pp_rank, pp = (
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(),
        case["pp"],
    )
    state = load_rank_state(case["mg_root"], None, tp_rank, pp_rank, pp)
    args = state["args"]
    weights = dict(state["model"])
    if case.get("adapter_root"):
        adapter = load_rank_state(case["adapter_root"], None, tp_rank, pp_rank, pp)
        args = adapter["args"]
        weights.update({k: v for k, v in adapter["model"].items() if is_lora_key(k)})
    cfg = model_config_from_args(state["args"]).replace(params_dtype=torch.float32)
    model = build_gpt_model(
        cfg,
        padded_vocab_size=state["args"].padded_vocab_size,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=case["kind"] != "logits",
        use_cpu_initialization=True,
        pipeline_dtype=torch.float32,
    )
    apply_lora(model, LoraConfig(r=args.lora_r, alpha=float(args.lora_alpha),
                                 target_modules=tuple(args.lora_target_modules)))
    model.load_state_dict(weights, strict=True)
    return model, cfg


def run_grads(case: dict, ids: torch.Tensor, out_dir: str) -> None:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model, cfg = build(case)
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if is_lora_key("." + n))
    ddp = DistributedDataParallel(
        config=model.config, ddp_config=DistributedDataParallelConfig(), module=model
    )
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3), [ddp])
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    tokens, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    pos = torch.arange(tokens.shape[1]).unsqueeze(0)

    def forward_step(iterator, chunk):
        next(iterator)
        out = chunk(tokens, pos, None, labels=labels)

        def loss_func(output):
            loss = output.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_func

    ddp.zero_grad_buffer()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None] * 4),
        model=[ddp],
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=1,
        forward_only=False,
    )
    offset = ps.get_pipeline_model_parallel_rank() * (cfg.num_layers // case["pp"])
    grads = {}
    for name, p in model.named_parameters():
        if is_lora_key("." + name):
            parts = name.split(".")
            parts[2] = str(int(parts[2]) + offset)  # decoder.layers.<global>.
            grads[".".join(parts)] = p.main_grad.detach().clone()
    result = {
        "loss": float(losses[0]["loss"]) if losses else None,
        "grads": grads,
        "lora_numel": lora_numel,
        "buffer_numel": sum(b.numel for b in ddp.buffers),
        "frozen_with_grad": [n for n, p in model.named_parameters() if not is_lora_key("." + n) and
                             (p.requires_grad or hasattr(p, "main_grad"))],
        "optimizer_numel": sum(p.numel() for p in opt_params),
    }
    name = f"{case['name']}_tp{ps.get_tensor_model_parallel_rank()}_pp{ps.get_pipeline_model_parallel_rank()}"
    if ps.get_data_parallel_rank() == 0:
        torch.save(result, os.path.join(out_dir, name + ".pt"))


def run_logits(case: dict, ids: torch.Tensor, out_dir: str) -> None:
    model, cfg = build(case)
    model.eval()
    seq = ids.shape[1]
    pos = torch.arange(seq).unsqueeze(0)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            hidden = torch.empty(seq, 1, cfg.hidden_size)
            dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        out = model(ids, pos, None)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
    if (
        ps.is_pipeline_last_stage()
        and ps.get_tensor_model_parallel_rank() == 0
        and ps.get_data_parallel_rank() == 0
    ):
        torch.save(out[..., : cfg.vocab_size].float(), os.path.join(out_dir, case["name"] + ".pt"))


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    dist.init_process_group("gloo")
    ids = torch.tensor(spec["ids"])
    for case in spec["cases"]:
        ps.initialize_model_parallel(case["tp"], case["pp"])
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        (run_grads if case["kind"] == "grads" else run_logits)(case, ids, out_dir)
        dist.barrier()
        ps.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    main()
