"""Real processes for the "nothing lost" tests: a tool run as a child, a file-size limit, signals, a read-only
mount.

* Full disk: the child gets ``RLIMIT_FSIZE`` (and SIGXFSZ ignored), so a write past the limit fails
  with ``EFBIG``, as it fails with ``ENOSPC`` on a full disk.
* Signals: :func:`signal_when` single-steps the child with SIGSTOP/SIGCONT until a condition on disk
  holds (it has started writing), then delivers the signal; no timing guesses (a run that slipped through
  the window between two stops may be started again).
* Read-only: a read-only tmpfs mount as root (root ignores permission bits), ``chmod 555`` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }


def _preexec(fsize: int | None) -> Callable[[], None] | None:
    if fsize is None:
        return None

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return limit


def run_tool(script: str, *args, fsize: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repo root; ``fsize``: a file-size limit in bytes."""
    cmd = [sys.executable, str(REPO_ROOT / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO_ROOT,
                          preexec_fn=_preexec(fsize))


def start_tool(script: str, *args) -> subprocess.Popen:
    """Start ``python <script> args`` (stdout/stderr captured)."""
    cmd = [sys.executable, str(REPO_ROOT / script), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=REPO_ROOT)


def _wait_stopped(pid: int) -> None:
    for _ in range(10000):
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.0002)


def signal_when(start: Callable[[], subprocess.Popen], ready: Callable[[], bool], sig: int, *,
                step: float = 0.003, timeout: float = 240, attempts: int = 1) -> tuple[int, str]:
    """Single-step the tool ``start()`` starts until ``ready()`` holds while it is stopped, send ``sig``;
    returns (rc, stderr).

    On a loaded machine this process may sleep through the whole window (the tool runs between two stops).
    With ``attempts`` > 1 a run that finished before ``ready()`` ever held is started again: only for a tool
    whose complete run leaves the same output as the earlier one (the test compares against it).
    """
    for attempt in range(attempts):
        proc = start()
        try:
            if _step_until(proc, ready, sig, step, timeout):
                _, err = proc.communicate(timeout=120)
                return proc.returncode, err
            if proc.returncode != 0 or attempt == attempts - 1:
                raise AssertionError(f"the tool exited ({proc.returncode}) before the condition held:\n"
                                     f"{proc.stderr.read()[-3000:]}")
            proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    raise AssertionError("unreachable")


def _step_until(
    proc: subprocess.Popen, ready: Callable[[], bool], sig: int, step: float, timeout: float
) -> bool:
    """Whether ``sig`` was sent (``ready()`` held with ``proc`` stopped); False: ``proc`` exited first."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        _wait_stopped(proc.pid)
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, sig)
            os.kill(proc.pid, signal.SIGCONT)
            return True
        os.kill(proc.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(step)


def error_line(stderr: str) -> str:
    """The tool's only error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-4000:]
    return lines[0]


def tree_digest(root: str | Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (hidden files too)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def leftovers(folder: str | Path) -> list[str]:
    """Temporary files or folders of the tools anywhere under ``folder``."""
    found = []
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            if ".tmp" in name or ".old-" in name:
                found.append(os.path.join(parent, name))
    return found


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` made read-only for this process and its children, with its files kept (copied in)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, mode)
        return
    # root ignores permission bits: mount a read-only tmpfs holding a copy of the folder
    staging = path.with_name(path.name + "-content")
    os.rename(path, staging)
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{staging}/.", str(path)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
