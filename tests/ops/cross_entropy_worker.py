"""torchrun worker for test_cross_entropy: TP=2, each rank computes the loss on its half of the vocabulary."""

from __future__ import annotations

import mindspeed_llm  # noqa: F401 - first: the CPU device layer, megatron-core imported under it

import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from mindspeed_llm.ops.cross_entropy import chunked_vocab_parallel_cross_entropy


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
    torch.save({"loss": loss.detach(), "grad": shard.grad}, folder / f"rank{rank}.pt")
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    main(Path(sys.argv[1]))
