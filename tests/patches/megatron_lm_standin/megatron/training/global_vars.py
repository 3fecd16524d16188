"""Stand-in: the parsed args, as Megatron-LM keeps them."""

_ARGS = None


def get_args():
    """The args set by initialize_megatron."""
    return _ARGS


def set_args(args) -> None:
    """Keep ``args`` for get_args."""
    global _ARGS
    _ARGS = args
