"""Pretrain a GPT-style model (Qwen2.5, Llama) with megatron-core: Megatron-LM's command line and shape.

    torchrun --nproc-per-node 8 pretrain_gpt.py --tensor-model-parallel-size 2 ... \
        --data-path DATA_text_document

See docs/training.md. Import order matters: the command line is checked before torch is imported
(``--help`` and a bad flag answer at once), then ``mindspeed_llm`` patches torch for the device,
then megatron-core is imported.
"""

# Read by mindspeed_llm's __init__: this script applies the base patches itself, after checking its flags.
MINDSPEED_LLM_LATE_PATCHES = True

import mindspeed_llm  # noqa: E402, I001  (torch-free until apply_base_patches)
from mindspeed_llm.config.validate import check_command_line  # noqa: E402

if __name__ == "__main__":
    check_command_line()
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit (seconds per process)

mindspeed_llm.apply_base_patches()  # device layer first: megatron-core then runs on CPU, CUDA or NPU

from functools import partial  # noqa: E402

import torch  # noqa: E402
from megatron.core.enums import ModelType  # noqa: E402
from megatron.core.utils import get_batch_on_this_cp_rank  # noqa: E402

from mindspeed_llm.config.groups import transformer_config  # noqa: E402
from mindspeed_llm.models.builder import build_gpt_model  # noqa: E402
from mindspeed_llm.runtime.run import get_args, get_config, get_plan, get_tokenizer  # noqa: E402
from mindspeed_llm.training.data import broadcast_batch, build_gpt_datasets  # noqa: E402
from mindspeed_llm.training.training import pretrain, run_main  # noqa: E402


def model_provider(pre_process: bool = True, post_process: bool = True, vp_stage: int | None = None):
    """The GPTModel chunk of this rank (local spec, RMSNorm, RoPE, SwiGLU)."""
    config, plan = get_config(), get_plan()
    return build_gpt_model(
        plan.model_config,
        padded_vocab_size=plan.padded_vocab_size,
        pre_process=pre_process,
        post_process=post_process,
        transformer_config=transformer_config(config, plan),
        vp_stage=vp_stage,
        max_sequence_length=config.model.max_position_embeddings,
    )


def get_batch(data_iterator):
    """tokens, labels, loss_mask, attention_mask, position_ids of the next micro-batch (Nones on middle
    stages).

    TP rank 0 of the first and last pipeline stages reads it and broadcasts it to its TP group; with
    --context-parallel-size each CP rank keeps its pair of sequence chunks (megatron-core's split).
    """
    return get_batch_and_documents(data_iterator)[:5]


def get_batch_and_documents(data_iterator):
    """:func:`get_batch` and, with --reset-attention-mask, the documents of the micro-batch (PackedSeqParams).

    The documents are read from the whole sequence's position ids before the CP split: a CP rank's
    chunk pair alone cannot tell where a document that crosses its chunks begins.
    """
    args = get_args()
    batch = broadcast_batch(data_iterator, every_stage=args.reset_attention_mask)
    if batch is None:
        return None, None, None, None, None, None
    documents = None
    if args.reset_attention_mask:  # packed samples: each attends within itself, positions restart
        from megatron.core import parallel_state as ps

        from mindspeed_llm.ops.packing import document_packed_seq_params

        cp_group = ps.get_context_parallel_group() if args.context_parallel_size > 1 else None
        documents = document_packed_seq_params(batch["position_ids"], cp_group=cp_group)
    batch = get_batch_on_this_cp_rank(batch)  # a no-op at CP 1
    # No attention mask: the model's causal mask applies (per document with --reset-attention-mask).
    return batch["tokens"], batch["labels"], batch["loss_mask"], None, batch["position_ids"], documents


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Megatron-LM's GPT loss: the masked token losses' sum, their count, and both for the log.

    The schedule divides the sum by the count and the micro-batch count (or, with
    --calculate-per-token-loss, the gradients by the global batch's token count); the trainer
    reports sum / count over the global batch and the data-parallel ranks.
    """
    losses = output_tensor.float().view(-1)
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}


def moe_padding_mask(args, loss_mask: torch.Tensor | None) -> torch.Tensor | None:
    """megatron-core's MoE ``padding_mask`` (True: not a real token) for instruction data: padding and the
    -100 prompt part are left out of the router's load-balancing and z losses, as Megatron-LM's SFT does.

    Only at one pipeline stage: megatron-core 0.16.1 cuts the mask for sequence parallelism on the first
    stage only, and middle stages read no batch; pretraining batches (no padding) pass none."""
    if (loss_mask is None or not getattr(args, "num_experts", None)
            or not getattr(args, "is_instruction_dataset", False) or args.pipeline_model_parallel_size > 1):
        return None
    return loss_mask == 0


def forward_step(data_iterator, model):
    """One micro-batch forward; returns the per-token losses and how to reduce them."""
    tokens, labels, loss_mask, attention_mask, position_ids, documents = get_batch_and_documents(
        data_iterator
    )
    extra = {} if documents is None else {"packed_seq_params": documents}
    padding_mask = moe_padding_mask(get_args(), loss_mask)
    if padding_mask is not None:
        extra["padding_mask"] = padding_mask
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels, **extra)
    return output_tensor, partial(loss_func, loss_mask)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    """GPTDataset train/valid/test splits of --data-path (instruction data with --is-instruction-dataset)."""
    return build_gpt_datasets(get_args(), get_tokenizer(), train_val_test_num_samples)


if __name__ == "__main__":
    run_main(
        lambda: pretrain(
            train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step
        )
    )
