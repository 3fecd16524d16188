"""One-line user messages that stay whole when several processes share a terminal (torch-free)."""

from __future__ import annotations

import os
import sys
from typing import TextIO


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` and its newline in one write call, flushed: lines of other ranks cannot cut into it."""
    stream = stream or sys.stdout
    line = text.rstrip("\n") + "\n"
    stream.flush()  # whatever the stream buffered goes first
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO (tests, redirect_stdout): no descriptor
        stream.write(line)
        stream.flush()
        return
    # One os.write: atomic on a pipe up to PIPE_BUF (4096 bytes); print() writes text and "\n" separately.
    data = line.encode(getattr(stream, "encoding", None) or "utf-8", errors="replace")
    while data:
        data = data[os.write(fd, data):]


def print_error(message: str, rank: int | None = None) -> None:
    """``error: message`` on stderr as one line; ``[rank N] error: ...`` when ``rank`` is given."""
    prefix = f"[rank {rank}] " if rank is not None else ""
    write_line(f"{prefix}error: {message}", sys.stderr)


def launch_rank() -> tuple[int, int]:
    """(rank, world size) of this process from torchrun's environment, before any process group exists."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
