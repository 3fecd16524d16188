"""A megatron-core training script written for CUDA GPUs, unchanged apart from the first line.

Run with torchrun; argv: TP PP [steps]. Prints one `loss <step> <value>` line per step on the
last pipeline stage of data-parallel rank 0.
"""

import mindspeed_llm  # noqa: F401 - the only line a CUDA megatron-core script needs on CPU

import os
import sys
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.transformer_config import TransformerConfig

SEQ, MBS, VOCAB = 32, 2, 128


def main() -> None:
    tp, pp = int(sys.argv[1]), int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group("nccl")
    parallel_state.initialize_model_parallel(tp, pp)
    model_parallel_cuda_manual_seed(1234)

    config = TransformerConfig(
        num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32, hidden_dropout=0.0, attention_dropout=0.0,
    )
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=VOCAB, max_sequence_length=SEQ,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        position_embedding_type="rope",
    )
    model.cuda(torch.cuda.current_device())
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=False, overlap_grad_reduce=False)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=3e-3, use_distributed_optimizer=False), [model]
    )
    config.finalize_model_grads_func = finalize_model_grads

    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, VOCAB // 4, (MBS, SEQ + 1), generator=generator)  # one batch, memorised
    tokens = data[:, :-1].cuda()
    labels = data[:, 1:].cuda()
    position_ids = torch.arange(SEQ, device="cuda").unsqueeze(0).expand(MBS, -1)

    def loss_func(output_tensor):
        loss = output_tensor.float().mean()
        return loss, {"loss": loss.detach().clone()}

    def forward_step(data_iterator, model):
        output = model(tokens, position_ids, None, labels=labels)
        return output, partial(loss_func)

    forward_backward = get_forward_backward_func()
    for step in range(steps):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(
            forward_step_func=forward_step, data_iterator=None, model=model, num_microbatches=1,
            seq_length=SEQ, micro_batch_size=MBS, forward_only=False,
        )
        optimizer.step()
        torch.cuda.synchronize()
        if parallel_state.is_pipeline_last_stage() and parallel_state.get_data_parallel_rank() == 0 \
                and parallel_state.get_tensor_model_parallel_rank() == 0:
            print(f"loss {step} {losses[0]['loss'].item():.6f}", flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
