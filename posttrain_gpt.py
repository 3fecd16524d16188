"""Fine-tune a GPT-style model on instruction data (SFT): MindSpeed-LLM's ``posttrain_gpt.py --stage sft``.

    torchrun --nproc-per-node 8 posttrain_gpt.py --stage sft --finetune --load CKPT ... \\
        --data-path ./finetune_dataset/alpaca --prompt-type qwen

The model, the forward step and the loss are pretrain_gpt.py's; ``--stage sft`` makes ``--data-path``
the prefix of preprocess_data.py's instruction datasets (``PREFIX_packed_{input_ids,attention_mask,labels}
_document``) and the loss token-weighted over the global batch. See docs/sft.md.
"""

# Read by mindspeed_llm's __init__: this script applies the base patches itself, after checking its flags.
MINDSPEED_LLM_LATE_PATCHES = True

import mindspeed_llm  # noqa: E402, I001  (torch-free until apply_base_patches)
from mindspeed_llm.config.validate import check_command_line  # noqa: E402

if __name__ == "__main__":
    check_command_line(require_stage=True)
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit (seconds per process)

mindspeed_llm.apply_base_patches()  # device layer first: megatron-core then runs on CPU, CUDA or NPU

from megatron.core.enums import ModelType  # noqa: E402

from mindspeed_llm.training.training import pretrain, run_main  # noqa: E402
from pretrain_gpt import forward_step, model_provider, train_valid_test_datasets_provider  # noqa: E402

if __name__ == "__main__":
    run_main(
        lambda: pretrain(
            train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step
        )
    )
