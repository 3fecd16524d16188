"""The OSError behind a failed write, and a one-line reason for it (shared by the command-line tools)."""

from __future__ import annotations

import errno
import os
import re

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind a library's write error (torch's RuntimeError context, safetensors' text)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, OSError):
            return cur
        m = _OS_ERROR_IN_TEXT.search(str(cur))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def describe_os_error(exc: OSError) -> str:
    """``strerror`` plus a hint for the common cases (disk full, file-size limit, read-only)."""
    text = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "the disk is full: free space or choose another folder",
        errno.EDQUOT: "the disk quota is exceeded: free space or choose another folder",
        errno.EFBIG: "the file-size limit was reached (ulimit -f): raise it or write elsewhere",
        errno.EROFS: "the file system is read-only: choose a writable folder",
        errno.EACCES: "permission denied: choose a folder you can write to",
        errno.EPERM: "permission denied: choose a folder you can write to",
    }.get(exc.errno)
    return f"{text}; {hint}" if hint else text


def interrupt_of(exc: BaseException) -> BaseException | None:
    """A KeyboardInterrupt / SIGTERM exception that a library wrapped (torch.save's RuntimeError)."""
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return None
        if not isinstance(cur, Exception):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None
