"""Evaluate a Megatron checkpoint (any TP/PP/EP) on benchmarks, launched like training: MindSpeed-LLM's
evaluation.py.

    torchrun --nproc-per-node 2 evaluation.py --tensor-model-parallel-size 2 <model flags> \
        --load CKPT --tokenizer-name-or-path HF_DIR --task mmlu --task-data-path ./mmlu/data
    torchrun ... evaluation.py <model flags> --load CKPT ... --lm-eval-tasks arc_easy --output-path ./out

See docs/evaluation.md. Import order as inference.py: the command line is checked before torch is imported,
then ``mindspeed_llm`` patches torch for the device, then megatron-core is imported.
"""

# Read by mindspeed_llm's __init__: this script applies the base patches itself, after checking its flags.
MINDSPEED_LLM_LATE_PATCHES = True

import mindspeed_llm  # noqa: E402, I001  (torch-free until apply_base_patches)
from mindspeed_llm.config.validate import check_command_line, check_evaluation_args  # noqa: E402
from mindspeed_llm.evaluation.config import add_evaluation_args  # noqa: E402

if __name__ == "__main__":
    check_command_line(extra_args_provider=add_evaluation_args, check=check_evaluation_args)

mindspeed_llm.apply_base_patches()  # device layer first: megatron-core then runs on CPU, CUDA or NPU

from mindspeed_llm.evaluation.cli import main  # noqa: E402
from mindspeed_llm.training.training import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
