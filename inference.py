"""Generate text from a Megatron checkpoint (any TP/PP), launched like training: MindSpeed-LLM's inference.py.

    torchrun --nproc-per-node 2 inference.py --tensor-model-parallel-size 2 <model flags> \
        --load CKPT --tokenizer-name-or-path HF_DIR --max-new-tokens 64 --prompt "Hello"

See docs/inference.md. Import order as pretrain_gpt.py: the command line is checked before torch is
imported, then ``mindspeed_llm`` patches torch for the device, then megatron-core is imported.
"""

# Read by mindspeed_llm's __init__: this script applies the base patches itself, after checking its flags.
MINDSPEED_LLM_LATE_PATCHES = True

import mindspeed_llm  # noqa: E402, I001  (torch-free until apply_base_patches)
from mindspeed_llm.config.flags import add_inference_args  # noqa: E402
from mindspeed_llm.config.validate import check_command_line, check_inference_args  # noqa: E402

if __name__ == "__main__":
    check_command_line(extra_args_provider=add_inference_args, check=check_inference_args, error_status=2)

mindspeed_llm.apply_base_patches()  # device layer first: megatron-core then runs on CPU, CUDA or NPU

from mindspeed_llm.inference.cli import main  # noqa: E402
from mindspeed_llm.training.training import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main, user_error_status=2)  # a tool's refusal: exit 2, as convert_ckpt.py
