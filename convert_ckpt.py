"""Convert checkpoints between HuggingFace and Megatron-mcore (see docs/checkpoint.md)."""

import sys

import torch.utils._device

# Workaround until the CPU device layer does it: fill torch's cache of factory functions before they are
# wrapped, or transformers' from_pretrained (used by --verify) builds RoPE buffers from uninitialised memory.
torch.utils._device._device_constructors()

from mindspeed_llm.checkpoint.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
