"""Fine-tune a GPT-style model on instruction data (SFT): MindSpeed-LLM's ``posttrain_gpt.py --stage sft``.

    torchrun --nproc-per-node 8 posttrain_gpt.py --stage sft --finetune --load CKPT ... \\
        --data-path ./finetune_dataset/alpaca --prompt-type qwen

The model, the forward step and the loss are pretrain_gpt.py's; ``--stage sft`` makes ``--data-path``
the prefix of preprocess_data.py's instruction datasets (``PREFIX_packed_{input_ids,attention_mask,labels}
_document``) and the loss token-weighted over the global batch. See docs/sft.md.

``--stage dpo|simpo|orpo --is-pairwise-dataset``: preference alignment on pairwise data
(``PREFIX_packed_{chosen,rejected}_{input_ids,labels}_document``) with a frozen reference model
(mindspeed_llm/dpo, docs/dpo.md).
"""

# Read by mindspeed_llm's __init__: this script applies the base patches itself, after checking its flags.
MINDSPEED_LLM_LATE_PATCHES = True

import mindspeed_llm  # noqa: E402, I001  (torch-free until apply_base_patches)
from mindspeed_llm.config.validate import check_command_line  # noqa: E402

if __name__ == "__main__":
    LAUNCH = check_command_line(require_stage=True)
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit (seconds per process)

mindspeed_llm.apply_base_patches()  # device layer first: megatron-core then runs on CPU, CUDA or NPU

from megatron.core.enums import ModelType  # noqa: E402

from mindspeed_llm.training.training import pretrain, run_main  # noqa: E402
from pretrain_gpt import forward_step, get_batch, model_provider, train_valid_test_datasets_provider  # noqa: E402


def pairwise_datasets_provider(train_val_test_num_samples):
    """--stage dpo|simpo|orpo: the pairwise datasets of --data-path (read where megatron reads data)."""
    from mindspeed_llm.dpo.data import build_pairwise_datasets
    from mindspeed_llm.runtime.run import get_args, get_tokenizer
    from mindspeed_llm.training.data import dataset_built_on_this_rank

    return build_pairwise_datasets(get_args(), get_tokenizer(), train_val_test_num_samples,
                                   dataset_built_on_this_rank())


def pair_batch(data_iterator):
    """tokens, labels, loss_mask, position_ids of the next micro-batch of pairs (Nones on middle stages)."""
    tokens, labels, loss_mask, _, position_ids = get_batch(data_iterator)
    return tokens, labels, loss_mask, position_ids


def main(launch) -> None:
    """SFT, or a preference stage with its forward step and reference model (mindspeed_llm/dpo)."""
    from mindspeed_llm.dpo.config import DpoConfig

    cfg = DpoConfig.from_args(launch)
    if cfg is None:
        pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                 forward_step)
        return
    from mindspeed_llm.dpo.step import PreferenceStep

    step = PreferenceStep(cfg, model_provider, pair_batch)
    pretrain(pairwise_datasets_provider, model_provider, ModelType.encoder_or_decoder, step,
             prepare_model=step.prepare)


if __name__ == "__main__":
    run_main(lambda: main(LAUNCH))
