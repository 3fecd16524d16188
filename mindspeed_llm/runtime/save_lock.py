"""One training run per ``--save`` folder: an advisory lock file, and the debris of interrupted saves.

The lock is ``fcntl.flock`` on ``SAVE/.mindspeed_llm_train.lock``, which holds the holder's host, PID,
start time and run tag (torchrun's rendezvous address and run id) for the error a second run prints.
The kernel drops a flock when its process ends, however it ends (kill -9 included), so a dead run never
keeps a folder locked; the file itself stays behind and means nothing without the flock. Global rank 0
takes it; with ``--no-shared-storage`` every node saves into its own folder, so the first process of
every node takes the lock of its node's copy (a node that finds the folder held under its own run's tag
goes on: the storage was shared after all).
flock works on local file systems and on NFS v4 (Linux emulates it with POSIX locks there).

Whoever holds the lock knows no other run writes into the folder, so ``*.tmp`` files there are the
debris of a save that was killed (kill -9 leaves them, nothing else does): they are removed.
"""

from __future__ import annotations

import datetime
import fcntl
import glob
import logging
import os
import socket

from mindspeed_llm.runtime.errors import SaveError

logger = logging.getLogger(__name__)

LOCK_FILENAME = ".mindspeed_llm_train.lock"
_HELD: dict[str, int] = {}


def _why(exc: OSError) -> str:
    from mindspeed_llm.io_errors import describe_os_error

    return describe_os_error(exc)


def _run_tag() -> str:
    """This launch's identity (torchrun's rendezvous address and run id); "-" without torchrun."""
    if "MASTER_ADDR" not in os.environ or "TORCHELASTIC_RUN_ID" not in os.environ:
        return "-"
    return (
        f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}/{os.environ['TORCHELASTIC_RUN_ID']}"
    )


def _holder(fd: int) -> tuple[str, str]:
    """(``host H, PID P, since T`` as the holder wrote it, its run tag)."""
    os.lseek(fd, 0, os.SEEK_SET)
    fields = os.read(fd, 512).decode("utf-8", "replace").split()
    if len(fields) >= 2:
        since = f", since {fields[2]}" if len(fields) > 2 else ""
        return f"host {fields[0]}, PID {fields[1]}{since}", (fields[3] if len(fields) > 3 else "")
    return "a process that has not written its name yet", ""


def lock_save_folder(save: str) -> None:
    """Create ``save`` if needed and hold its lock for the life of this process; SaveError if taken or
    unwritable."""
    key = os.path.realpath(save)
    if key in _HELD:
        return
    try:
        os.makedirs(save, exist_ok=True)
        fd = os.open(os.path.join(save, LOCK_FILENAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        why = _why(exc)
        fix = "" if ";" in why else ": give a folder this user can write checkpoints into"
        raise SaveError(f"--save {save} is not writable ({why}){fix}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder, tag = _holder(fd)
        os.close(fd)
        if tag != "-" and tag == _run_tag():
            # --no-shared-storage on storage that is shared after all: another node of this run holds it
            return
        raise SaveError(f"--save {save} is in use by another training run ({holder}): wait for it to end, or "
                        "give this run another --save folder") from None
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()} {stamp} {_run_tag()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise SaveError(f"--save {save} is not writable ({_why(exc)}): free space there or give another "
                        "--save folder") from None
    _HELD[key] = fd


def release_save_folder(save: str) -> None:
    """Drop the lock taken by :func:`lock_save_folder` (process exit drops it too)."""
    fd = _HELD.pop(os.path.realpath(save), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def remove_stale_temporaries(save: str) -> list[str]:
    """Delete ``*.tmp`` files an interrupted save left in ``save`` (call only while holding its lock)."""
    patterns = ["*.tmp", os.path.join("iter_*", "*.tmp"), os.path.join("iter_*", "mp_rank_*", "*.tmp")]
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(save), pattern)):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        logger.info("> removed %d temporary file(s) an interrupted save left in %s", len(removed), save)
    return removed
