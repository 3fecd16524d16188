"""torchrun worker for test_cross_entropy: TP=2, each rank computes the loss on its half of the vocabulary:
the blocked cross entropy of given logits, and the output layer fused into the loss
(test_linear_cross_entropy) on its half of the output weight, the hidden states entering the TP region as
megatron's output layer's do."""

from __future__ import annotations

import mindspeed_llm  # noqa: F401 - first: the CPU device layer, megatron-core imported under it

import sys
from pathlib import Path

import torch
from megatron.core import parallel_state, tensor_parallel

from mindspeed_llm.ops.cross_entropy import chunked_vocab_parallel_cross_entropy
from mindspeed_llm.ops.linear_cross_entropy import linear_cross_entropy


def main(folder: Path) -> None:
    torch.distributed.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    rank = parallel_state.get_tensor_model_parallel_rank()
    inputs = torch.load(folder / "inputs.pt")
    vocab = inputs["logits"].shape[-1]
    half = vocab // 2
    shard = inputs["logits"][..., rank * half:(rank + 1) * half].clone().requires_grad_()
    loss = chunked_vocab_parallel_cross_entropy(shard, inputs["target"])
    loss.backward(inputs["grad_out"].float())
    out = {"loss": loss.detach(), "grad": shard.grad}
    linear = inputs["linear"]
    rows = linear["weight"].shape[0] // 2
    weight = linear["weight"][rank * rows:(rank + 1) * rows].clone().requires_grad_()
    hidden = linear["hidden"].clone().requires_grad_()
    group = parallel_state.get_tensor_model_parallel_group()
    entered = tensor_parallel.copy_to_tensor_model_parallel_region(hidden, group=group)
    fused = linear_cross_entropy(entered, weight, linear["target"], linear["chunk"], group, rank, 2)
    ((fused * linear["mask"]).sum() / linear["mask"].sum()).backward()
    out["linear"] = {"loss": fused.detach(), "hidden_grad": hidden.grad, "weight_grad": weight.grad}
    torch.save(out, folder / f"rank{rank}.pt")
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    main(Path(sys.argv[1]))
