"""Stand-in: initialize_megatron asserts CUDA unless allow_no_cuda, as Megatron-LM's does."""

import torch
from megatron.training.arguments import parse_args, validate_args
from megatron.training.global_vars import set_args


def initialize_megatron(argv=None, extra_args_provider=None, args_defaults={}, allow_no_cuda=False):  # noqa: B006
    """Parse, validate and keep the args."""
    if not allow_no_cuda:
        assert torch.cuda.is_available(), "Megatron requires CUDA."
    args = parse_args(argv)
    validate_args(args, args_defaults)
    set_args(args)
