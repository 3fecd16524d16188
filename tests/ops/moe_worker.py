"""torchrun worker for test_moe: megatron-core's MoELayer on gloo at several (TP, EP) layouts, both
dispatchers, both expert layouts (SequentialMLP and the grouped GroupedMLP), loaded from one set of full
weights.

Each case re-initialises megatron's parallel state. Every rank writes, per case, the tokens it fed (its data-
parallel batch, its sequence-parallel slice with TP), the layer's output, the input's gradient and the
tracked load-balancing loss; the test recomputes all of it from the full weights with plain torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.moe_utils import (
    clear_aux_losses_tracker,
    get_moe_layer_wise_logging_tracker,
)

import mindspeed_llm  # noqa: F401 - first: the CPU device layer and the MoE patches

HIDDEN, FFN, EXPERTS, TOPK, SEQ, BATCH = 16, 8, 4, 2, 6, 2


def full_weights() -> dict[str, torch.Tensor]:
    """The layer's full weights (the test's too): router [E, H], gate/up [E, F, H], down [E, H, F]."""
    g = torch.Generator().manual_seed(7)
    return {name: torch.randn(*shape, generator=g) * scale for name, shape, scale in (
        ("router", (EXPERTS, HIDDEN), 0.5), ("gate", (EXPERTS, FFN, HIDDEN), 0.3),
        ("up", (EXPERTS, FFN, HIDDEN), 0.3), ("down", (EXPERTS, HIDDEN, FFN), 0.3))}


def batch_for(dp_rank: int, pad: int = 0) -> torch.Tensor:
    """[SEQ + pad, BATCH, HIDDEN] tokens of one data-parallel rank (the test makes the same)."""
    g = torch.Generator().manual_seed(100 + dp_rank)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=g)
    if pad:
        x = torch.cat([x, torch.randn(pad, BATCH, HIDDEN, generator=g)])
    return x


def load(layer: MoELayer, weights: dict, tp_rank: int, tp: int, ep_rank: int, grouped: bool) -> None:
    local = EXPERTS // ps.get_expert_model_parallel_world_size()
    shard = slice(tp_rank * FFN // tp, (tp_rank + 1) * FFN // tp)
    with torch.no_grad():
        layer.router.weight.copy_(weights["router"])
        for i in range(local):
            e = ep_rank * local + i
            fc1 = torch.cat([weights["gate"][e][shard], weights["up"][e][shard]])  # [2F/tp, H]
            fc2 = weights["down"][e][:, shard]  # [H, F/tp]
            if grouped:
                layer.experts.weight1.view(local, HIDDEN, -1)[i].copy_(fc1.t())
                layer.experts.weight2.view(local, -1, HIDDEN)[i].copy_(fc2.t())
            else:
                layer.experts.local_experts[i].linear_fc1.weight.copy_(fc1)
                layer.experts.local_experts[i].linear_fc2.weight.copy_(fc2)


def run_case(folder: Path, tp: int, ep: int, dispatcher: str, grouped: bool, pad: int) -> None:
    """One case on the model-parallel groups of its (TP, EP) (initialized by the caller)."""
    model_parallel_cuda_manual_seed(1)
    config = TransformerConfig(
        num_layers=1, hidden_size=HIDDEN, num_attention_heads=2, ffn_hidden_size=FFN,
        num_moe_experts=EXPERTS, moe_router_topk=TOPK, moe_ffn_hidden_size=FFN,
        moe_token_dispatcher_type=dispatcher, moe_grouped_gemm=grouped, add_bias_linear=False,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, bias_activation_fusion=False,
        tensor_model_parallel_size=tp, expert_model_parallel_size=ep, sequence_parallel=tp > 1,
        use_cpu_initialization=True, moe_aux_loss_coeff=0.01, moe_router_load_balancing_type="aux_loss",
        params_dtype=torch.float32)
    spec = get_moe_module_spec(use_te=False, num_experts=EXPERTS, moe_grouped_gemm=grouped)
    layer = MoELayer(config, spec.submodules)
    layer.set_layer_number(1)
    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    load(layer, full_weights(), tp_rank, tp, ps.get_expert_model_parallel_rank(), grouped)
    x = batch_for(dp_rank, pad)
    padding_mask = None
    if pad:
        padding_mask = torch.zeros(BATCH, SEQ + pad, dtype=torch.bool)
        padding_mask[:, SEQ:] = True  # megatron's convention: True marks a padding token ([b, s])
    if tp > 1:  # sequence parallel: this rank's slice of the sequence
        rows = x.shape[0] // tp
        x = x[tp_rank * rows:(tp_rank + 1) * rows]
        if padding_mask is not None:
            padding_mask = padding_mask[:, tp_rank * rows:(tp_rank + 1) * rows]
    x = x.clone().requires_grad_()
    clear_aux_losses_tracker()
    out, _ = layer(x, padding_mask=padding_mask)  # [b, s], as GPTModel passes it down
    (out * torch.arange(1, out.numel() + 1, dtype=out.dtype).view_as(out) / out.numel()).sum().backward()
    tracker = get_moe_layer_wise_logging_tracker()["load_balancing_loss"]
    aux = tracker["values"].clone()
    torch.distributed.all_reduce(aux, group=tracker["reduce_group"])  # megatron's logging reduction
    name = f"tp{tp}_ep{ep}_{dispatcher}_{'grouped' if grouped else 'sequential'}_pad{pad}"
    rank = torch.distributed.get_rank()
    torch.save({"tp": tp, "tp_rank": tp_rank, "dp_rank": dp_rank, "out": out.detach(), "grad": x.grad,
                "aux": aux[0]}, folder / f"{name}.rank{rank}.pt")


CASES = [  # (tp, ep, dispatcher, grouped, pad)
    (1, 2, "alltoall", False, 0), (1, 2, "alltoall", True, 0), (1, 2, "allgather", True, 0),
    (1, 2, "allgather", False, 0), (2, 2, "alltoall", True, 0), (2, 2, "allgather", False, 0),
    (1, 2, "alltoall", True, 4),
]


def main(folder: Path) -> None:
    torch.distributed.init_process_group("gloo")
    world = torch.distributed.get_world_size()
    # The cases of one (TP, EP) share its groups: creating megatron's groups on gloo is much of a case's
    # time, and a case's result does not depend on the cases run before it on the same groups.
    layout = None
    for tp, ep, dispatcher, grouped, pad in sorted(CASES, key=lambda c: c[:2]):
        if tp * ep > world:
            continue
        if (tp, ep) != layout:
            if layout is not None:
                ps.destroy_model_parallel()
            layout = (tp, ep)
            ps.initialize_model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=ep)
        run_case(folder, tp, ep, dispatcher, grouped, pad)
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()
    main(Path(sys.argv[1]))
