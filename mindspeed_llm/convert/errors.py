"""Errors the converter reports to users (one line: the path or flag, what was expected, the fix).

``convert_ckpt.py`` exit codes: 2 for :class:`CheckpointError` (bad flags or input, including
:class:`DamagedCheckpointError`; both come from the checkpoint I/O,
:mod:`mindspeed_llm.runtime.checkpoint.errors`), 1 for :class:`OutputWriteError` and
:class:`VerificationError`, 3 for :class:`VerificationUnavailable`, 130 / 143 for SIGINT / SIGTERM.
"""

from __future__ import annotations

import os

from mindspeed_llm.io_errors import describe_os_error, os_error_of
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError

__all__ = ["CheckpointError", "DamagedCheckpointError", "OutputWriteError", "VerificationError",
           "VerificationUnavailable", "check_load_dir", "describe_os_error", "os_error_of"]


class OutputWriteError(Exception):
    """Writing the output failed (disk full, read-only, I/O error); nothing was replaced. Exit 1."""


class VerificationError(Exception):
    """``--verify`` found logits further apart than the tolerance."""


class VerificationUnavailable(Exception):
    """``--verify`` could not run (too little memory, no HF folder to compare with). Exit 3."""


def check_load_dir(folder: str, load_model_type: str) -> None:
    """``--load-dir`` exists and holds something (torch-free: ``convert_ckpt.py`` checks it before
    importing)."""
    what = "the HF model folder" if load_model_type == "hf" else "the Megatron checkpoint folder"
    if not os.path.isdir(folder):
        state = "is a file" if os.path.exists(folder) else "does not exist"
        raise CheckpointError(f"--load-dir {folder} {state}: point it at {what}")
    try:
        entries = os.listdir(folder)
    except OSError as exc:
        raise CheckpointError(f"--load-dir {folder} cannot be read ({exc.strerror})") from None
    if not entries:
        fill = ("download the HF model (config.json + *.safetensors) into it" if load_model_type == "hf"
                else f"point it at {what}")
        raise CheckpointError(f"--load-dir {folder} is empty: {fill}")
