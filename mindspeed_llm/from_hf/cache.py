"""Caches built once and reused: keyed by what made them, published whole, one builder at a time.

A cache is a folder. It is complete when it holds :data:`~mindspeed_llm.from_hf.config.MARKER` with the
key of what made it (source files' sizes and modification times, the tool's flags, the layout); a
different key rebuilds it. A build writes into a staging folder beside it and renames that into place
with the marker already inside, so a build killed at any point (SIGKILL included) leaves a staging folder,
never a folder mistaken for complete; the next build removes it. Builders take an exclusive ``flock`` on
``<cache>.lock``: two launches at once build one cache, the second reuses it. Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from mindspeed_llm.from_hf.config import CACHE_VERSION, MARKER, FromHfError
from mindspeed_llm.io_errors import describe_os_error

_WAIT_NOTE_S = 30.0


def log(message: str) -> None:
    """A start-up line of this path (flushed: the other ranks' output interleaves)."""
    print(message, flush=True)


def file_stats(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file: what a key says of its sources."""
    out = []
    for path in sorted(paths):
        st = os.stat(path)
        out.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
    return out


def make_key(**parts) -> str:
    """The key of a cache: a hash of what made it."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_marker(folder: str) -> dict | None:
    """The marker of a published cache (None: not a complete cache)."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(folder: str, key: str) -> bool:
    """True when ``folder`` is a published cache made with ``key``."""
    marker = read_marker(folder)
    return bool(marker) and marker.get("key") == key


def _staging_base(final: str, source: str | None) -> str:
    """Where staging folders of ``final`` go: beside it, or beside ``source`` when ``final`` lies inside it
    (the converters refuse to write inside the folder they read)."""
    final = os.path.abspath(final)
    if source:
        src = os.path.realpath(source)
        if os.path.realpath(final).startswith(src.rstrip(os.sep) + os.sep):
            return os.path.join(os.path.dirname(src), f".{os.path.basename(src)}.{os.path.basename(final)}")
    return final


def _cannot_write(where: str, exc: OSError, fix: str) -> FromHfError:
    return FromHfError(
        f"cannot write the cache {where} ({describe_os_error(exc)}); nothing was left half-written: {fix}"
    )


def _check_writable(final: str, base: str, fix: str) -> None:
    """The folders the cache and its staging go to take a new file (before minutes of building)."""
    for folder in dict.fromkeys((os.path.dirname(os.path.abspath(final)), os.path.dirname(base))):
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".mindspeed_llm_write_probe-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("probe")
            os.remove(probe)
        except OSError as exc:
            raise _cannot_write(final, exc, fix) from None


@contextlib.contextmanager
def _locked(path: str, what: str, fix: str) -> Iterator[None]:
    """An exclusive flock on ``path`` (waiting, with a line every 30 s, while another launch builds)."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _cannot_write(path, exc, fix) from None
    try:
        noted = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if noted is None or time.monotonic() - noted >= _WAIT_NOTE_S:
                    log(f"> {what}: another launch is building it (lock {path}); waiting")
                    noted = time.monotonic()
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock (a killed holder's lock goes with its process)


def _remove_leftovers(base: str) -> None:
    """Staging folders of killed builds (ours, and the converter's own beside them)."""
    parent, name = os.path.split(base)
    converters = glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.staging-*"))
    for path in (
        glob.glob(glob.escape(base) + ".staging-*") + glob.glob(glob.escape(base) + ".old-*") + converters
    ):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def _write_marker(folder: str, key: str, info: dict) -> None:
    tmp = os.path.join(folder, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"key": key, "built": time.strftime("%Y-%m-%d %H:%M:%S"), **info}, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MARKER))


def _publish(staging: str, final: str, base: str) -> None:
    """Rename the finished staging folder to ``final`` (an older cache there is moved aside, then removed)."""
    old = None
    if os.path.lexists(final):
        old = f"{base}.old-{os.getpid()}"
        os.rename(final, old)
    os.rename(staging, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def ensure(
    final: str,
    key: str,
    build: Callable[[str], None],
    *,
    what: str,
    builder: bool,
    fix: str,
    source: str | None = None,
    info: dict | None = None,
    shared_note: str = "",
    speaks: bool = True,
    wait_minutes: float | None = None,
) -> bool:
    """Make ``final`` a complete cache of ``key``: reuse it, build it (``builder``) or wait for it.

    ``build(folder)`` writes the cache into ``folder`` (which does not exist yet). Returns True when this
    process built it. ``fix`` ends the line of a cache location that cannot be written. ``speaks``: this
    process says what it reuses or waits for (one process per node: the others would repeat its lines).
    ``wait_minutes``: how long a process that does not build waits for the cache (--cache-wait-minutes)
    before it stops with one line (None: as long as it takes).
    """
    if is_complete(final, key):
        if speaks or builder:
            log(f"> {what}: reusing {final} (built {read_marker(final).get('built')}; its sources unchanged)")
        return False
    if not builder:
        noted = started = time.monotonic()
        while not is_complete(final, key):
            if wait_minutes is not None and time.monotonic() - started > wait_minutes * 60:
                raise FromHfError(
                    f"{what}: waited {wait_minutes:g} min for {final}{shared_note} and it is not complete: "
                    "the building rank failed or is still building (see its output); raise "
                    "--cache-wait-minutes for a longer build"
                )
            if speaks and time.monotonic() - noted > _WAIT_NOTE_S:
                log(f"> {what}: waiting for {final}{shared_note}")
                noted = time.monotonic()
            time.sleep(0.1)
        return False
    base = _staging_base(final, source)
    _check_writable(final, base, fix)
    with _locked(f"{base}.lock", what, fix):
        if is_complete(final, key):
            log(f"> {what}: reusing {final} (built by another launch meanwhile)")
            return False
        _remove_leftovers(base)  # of a build that was killed
        reason = "building" if not os.path.exists(final) else "rebuilding (its sources or settings changed)"
        log(f"> {what}: {reason} {final}")
        staging = f"{base}.staging-{os.getpid()}"
        started = time.monotonic()
        try:
            build(staging)
            _write_marker(staging, key, info or {})
            _publish(staging, final, base)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise _cannot_write(final, exc, fix) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_leftovers(staging)  # the converter's own staging beside ours
            raise
        log(f"> {what}: built {final} in {time.monotonic() - started:.1f} s")
        sys.stdout.flush()
        return True
