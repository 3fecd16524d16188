"""Tokenize raw text into megatron-core indexed datasets (see docs/data.md)."""

import sys

from mindspeed_llm.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
