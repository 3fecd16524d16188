"""Stand-in: the CUDA-only architecture query."""

import torch


def get_device_arch_version():
    """GPU architecture major version (CUDA only)."""
    return torch.cuda.get_device_properties(torch.device("cuda:0")).major
