"""Model families as data (HF config <-> megatron-core config) and the GPTModel builder.

The names below are imported on first use (the command lines read :mod:`.names` without torch).
"""

import importlib

_EXPORTS = {
    "build_gpt_model": "builder", "FAMILIES": "families", "FamilySpec": "families", "ModelConfig": "families",
    "UnsupportedModelError": "families", "pipeline_layout": "families",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` (see ``_EXPORTS``)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
