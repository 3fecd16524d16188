"""Pretrain a GPT-style model (Qwen2.5, Llama) with megatron-core: Megatron-LM's command line and shape.

    torchrun --nproc-per-node 8 pretrain_gpt.py --tensor-model-parallel-size 2 ... --data-path DATA_text_document

See docs/training.md. Import order matters: ``mindspeed_llm`` patches torch for the device first.
"""

import mindspeed_llm  # noqa: F401, I001  (device layer first: megatron-core then runs on CPU, CUDA or NPU)

from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType

from mindspeed_llm.models.builder import build_gpt_model
from mindspeed_llm.training.arguments import transformer_config_from_args
from mindspeed_llm.training.data import build_gpt_datasets
from mindspeed_llm.training.initialize import get_args
from mindspeed_llm.training.training import get_model_config, get_tokenizer, pretrain, run_main


def model_provider(pre_process: bool = True, post_process: bool = True, vp_stage: int | None = None):
    """The GPTModel chunk of this rank (local spec, RMSNorm, RoPE, SwiGLU)."""
    args = get_args()
    model_config = get_model_config()
    config = transformer_config_from_args(args, model_config)
    return build_gpt_model(model_config, padded_vocab_size=args.padded_vocab_size, pre_process=pre_process,
                           post_process=post_process, transformer_config=config, vp_stage=vp_stage,
                           max_sequence_length=args.max_position_embeddings)


def get_batch(data_iterator):
    """tokens, labels, loss_mask, attention_mask, position_ids of the next micro-batch."""
    batch = next(data_iterator)
    # No attention mask: the model's causal mask applies (--reset-attention-mask is refused).
    return (batch["tokens"].cuda(), batch["labels"].cuda(), batch["loss_mask"].cuda(), None,
            batch["position_ids"].cuda())


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Mean token loss of the micro-batch; reports it averaged over the data-parallel group."""
    losses = output_tensor.float().view(-1)
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask) / loss_mask.sum().clamp(min=1)
    reported = loss.detach().clone()  # the schedule divides `loss` in place by the micro-batch count
    torch.distributed.all_reduce(reported, group=parallel_state.get_data_parallel_group())
    reported /= parallel_state.get_data_parallel_world_size()
    return loss, {"lm loss": reported}


def forward_step(data_iterator, model):
    """One micro-batch forward; returns the per-token losses and how to reduce them."""
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator)
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels)
    return output_tensor, partial(loss_func, loss_mask)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    """GPTDataset train/valid/test splits of --data-path."""
    return build_gpt_datasets(get_args(), get_tokenizer(), train_val_test_num_samples)


if __name__ == "__main__":
    run_main(lambda: pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                              forward_step))
