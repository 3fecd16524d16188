"""Stand-in for Megatron-LM's megatron.training (see ../../README.md)."""

from .global_vars import get_args
from .initialize import initialize_megatron

__all__ = ["get_args", "initialize_megatron"]
