"""Convert checkpoints between HuggingFace and Megatron-mcore (see docs/checkpoint.md)."""

# Read by mindspeed_llm's __init__: the command line is checked before torch is imported (cli.main
# applies the base patches after).
MINDSPEED_LLM_LATE_PATCHES = True

import sys  # noqa: E402

import mindspeed_llm  # noqa: E402
from mindspeed_llm.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    sys.exit(main())
