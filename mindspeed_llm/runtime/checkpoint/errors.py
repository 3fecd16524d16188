"""Errors of checkpoint I/O, one line each: the path, what was expected, the fix (torch-free).

The trainer prints them as ``error: ...`` and exits 1; ``convert_ckpt.py`` exits 2
(:mod:`mindspeed_llm.convert.errors` lists its exit codes).
"""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint that cannot be used as asked (missing, another model, flags that contradict it)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is damaged (truncated, wrong format, another model's): the message names the file."""
