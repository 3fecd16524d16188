"""Checkpoints: HF <-> megatron-core conversion and the Megatron legacy layout (see docs/checkpoint.md).

The names below are imported on first use, so that ``convert_ckpt.py`` reads its command line
(:mod:`mindspeed_llm.checkpoint.cli`) before torch is imported.
"""

import importlib
import sys
import types

_EXPORTS = {
    "ConvertOptions": "convert", "convert": "convert", "convert_hf_to_mg": "convert",
    "convert_mg_to_hf": "convert", "convert_mg_to_mg": "convert",
    "CheckpointError": "errors", "VerificationError": "errors",
    "checkpoint_dir_for": "layout", "checkpoint_file_for": "layout", "load_rank_state": "layout",
    "make_rank_state": "layout", "parallel_sizes": "layout", "read_tracker": "layout",
    "register_safe_globals": "layout", "safe_torch_load": "layout", "save_rank_state": "layout",
    "write_tracker": "layout",
    "model_config_from_args": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` (see ``_EXPORTS``)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's ``convert`` is the function: importing the submodule of that name must not rebind it."""

    def __setattr__(self, name: str, value) -> None:
        if name == "convert" and isinstance(value, types.ModuleType):
            return  # the import system binding submodule ``convert``; __getattr__ keeps answering the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
