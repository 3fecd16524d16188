"""The exceptions preprocessing raises for problems a user can fix (one line each, no traceback).

``preprocess_data.py`` prints ``error: <message>`` and exits 2 for :class:`PreprocessError` (bad
flags or input), 1 for :class:`OutputWriteError` (disk full, read-only target), 130 / 143 for
SIGINT / SIGTERM.
"""


class PreprocessError(Exception):
    """A user-facing preprocessing error: one line naming the path or flag and the fix.

    The entry point prints it as ``error: <message>`` and exits with status 2.
    """


class OutputWriteError(Exception):
    """Writing the dataset failed (disk full, read-only, I/O error); temporary files were removed. Exit 1."""
