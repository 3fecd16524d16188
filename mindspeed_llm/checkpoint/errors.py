"""Errors the converter reports to users (one line: the path or flag, what was expected, the fix)."""


class CheckpointError(Exception):
    """Bad input to a checkpoint conversion; ``convert_ckpt.py`` prints it as ``error: ...`` and exits 2."""


class VerificationError(Exception):
    """``--verify`` found logits further apart than the tolerance."""
