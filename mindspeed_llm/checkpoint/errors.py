"""Errors the converter reports to users (one line: the path or flag, what was expected, the fix)."""

import os


class CheckpointError(Exception):
    """Bad input to a checkpoint conversion; ``convert_ckpt.py`` prints it as ``error: ...`` and exits 2."""


class VerificationError(Exception):
    """``--verify`` found logits further apart than the tolerance."""


def check_load_dir(folder: str, load_model_type: str) -> None:
    """``--load-dir`` exists and holds something (torch-free: ``convert_ckpt.py`` checks it before importing)."""
    what = "the HF model folder" if load_model_type == "hf" else "the Megatron checkpoint folder"
    if not os.path.isdir(folder):
        raise CheckpointError(f"--load-dir {folder} does not exist: point it at {what}")
    if not os.listdir(folder):
        fill = ("download the HF model (config.json + *.safetensors) into it" if load_model_type == "hf"
                else f"point it at {what}")
        raise CheckpointError(f"--load-dir {folder} is empty: {fill}")
