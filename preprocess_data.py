"""Tokenize raw text into megatron-core indexed datasets (see docs/data.md)."""

# Read by mindspeed_llm's __init__: preprocessing needs no torch, and its command line answers at once.
MINDSPEED_LLM_LATE_PATCHES = True

import sys  # noqa: E402

import mindspeed_llm  # noqa: E402
from mindspeed_llm.data.cli import main  # noqa: E402

if __name__ == "__main__":
    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    sys.exit(main())
