"""Stand-in: initialize_megatron asserts CUDA unless allow_no_cuda, as Megatron-LM's does."""

import torch
from megatron.training.arguments import parse_args, validate_args
from megatron.training.global_vars import set_args


def initialize_megatron(extra_args_provider=None, args_defaults={}, ignore_unknown_args=False,  # noqa: B006
                        allow_no_cuda=False, skip_mpu_initialization=False, get_embedding_ranks=None,
                        get_position_embedding_ranks=None, parsed_args=None, store=None):
    """Parse (sys.argv, unless ``parsed_args``), validate and keep the args."""
    if not allow_no_cuda:
        assert torch.cuda.is_available(), "Megatron requires CUDA."
    args = parse_args(extra_args_provider, ignore_unknown_args) if parsed_args is None else parsed_args
    validate_args(args, args_defaults)
    set_args(args)
