"""Convert checkpoints between HuggingFace and Megatron-mcore (see docs/checkpoint.md)."""

import sys

from mindspeed_llm.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
