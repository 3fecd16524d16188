"""Checkpoints: HF <-> megatron-core conversion and the Megatron legacy layout (see docs/checkpoint.md)."""

from mindspeed_llm.checkpoint.convert import (
    ConvertOptions,
    convert,
    convert_hf_to_mg,
    convert_mg_to_hf,
    convert_mg_to_mg,
)
from mindspeed_llm.checkpoint.errors import CheckpointError, VerificationError
from mindspeed_llm.checkpoint.layout import (
    checkpoint_dir_for,
    checkpoint_file_for,
    load_rank_state,
    make_rank_state,
    parallel_sizes,
    read_tracker,
    register_safe_globals,
    safe_torch_load,
    save_rank_state,
    write_tracker,
)
from mindspeed_llm.checkpoint.sources import model_config_from_args

__all__ = [
    "CheckpointError", "ConvertOptions", "VerificationError", "checkpoint_dir_for", "checkpoint_file_for",
    "convert", "convert_hf_to_mg", "convert_mg_to_hf", "convert_mg_to_mg", "load_rank_state",
    "make_rank_state", "model_config_from_args", "parallel_sizes", "read_tracker", "register_safe_globals",
    "safe_torch_load", "save_rank_state", "write_tracker",
]
