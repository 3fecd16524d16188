"""The converter of ``convert_ckpt.py``: HF <-> megatron-core and mg -> mg resharding (see
docs/checkpoint.md).

Megatron checkpoints are read and written through the checkpoint interface
(:mod:`mindspeed_llm.runtime.checkpoint`); this package holds the conversion itself: the tensor mapping,
the HF side, the sources, the output folder's rules, ``--verify``. The names below are imported on
first use, so that ``convert_ckpt.py`` reads its command line (:mod:`mindspeed_llm.convert.cli`) before
torch is imported.
"""

import importlib
import sys
import types

_EXPORTS = {
    "ConvertOptions": "convert", "convert": "convert", "convert_hf_to_mg": "convert",
    "convert_mg_to_hf": "convert", "convert_mg_to_mg": "convert",
    "CheckpointError": "errors", "VerificationError": "errors",
    "model_config_from_args": "sources", "model_config_from_record": "sources", "open_mg_source": "sources",
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
            # the import system binding submodule ``convert``; __getattr__ keeps answering the function
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
