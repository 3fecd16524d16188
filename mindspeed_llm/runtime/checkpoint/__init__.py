"""The one checkpoint interface: what a checkpoint records, and the two formats that hold it.

- :mod:`.record`: :class:`CheckpointRecord` (versioned: :data:`RECORD_VERSION`), what a checkpoint says
  about its model and run, and the Megatron-LM ``args`` made from it;
- :mod:`.detect`: :func:`detect_format`, the one answer to "torch or torch_dist?";
- :mod:`.torch_format` (Megatron's legacy ``mp_rank_*`` files) and :mod:`.dist_format` (megatron-core
  ``dist_checkpointing``): each detects, reads the record, loads and saves;
- :mod:`.interface`: :func:`read_record`, :func:`load`, :func:`save` in either format;
- :mod:`.locate`: which checkpoint ``--load`` means; :mod:`.launch`: whether a launch fits it;
- :mod:`.layout`: file names, the tracker, atomic writes and safe reads of rank files.

The trainer (``training/checkpointing.py``), inference and the converter's sources all go through it.
The names below are imported on first use (the package itself imports no torch).
"""

import importlib

_EXPORTS = {
    "CheckpointError": "errors", "DamagedCheckpointError": "errors",
    "RECORD_VERSION": "record", "RECORD_KEY": "record", "CheckpointRecord": "record", "ModelRecord": "record",
    "LayoutRecord": "record", "ProgressRecord": "record", "file_header": "record",
    "read_header": "record",
    "TORCH": "detect", "TORCH_DIST": "detect", "detect_format": "detect",
    "read_record": "interface", "load": "interface", "save": "interface",
    "find_checkpoint": "locate", "read_checkpoint_record": "launch", "check_checkpoint_args": "launch",
    "checkpoint_dir_for": "layout", "checkpoint_file_for": "layout", "load_rank_file": "layout",
    "load_rank_state": "layout", "parallel_sizes": "layout", "read_tracker": "layout",
    "register_safe_globals": "layout", "safe_torch_load": "layout", "save_rank_state": "layout",
    "write_tracker": "layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` (see ``_EXPORTS``)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
