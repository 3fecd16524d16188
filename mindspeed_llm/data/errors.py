"""The one exception type preprocessing raises for problems a user can fix."""


class PreprocessError(Exception):
    """A user-facing preprocessing error: one line naming the path or flag and the fix.

    The entry point prints it as ``error: <message>`` and exits with status 2.
    """
