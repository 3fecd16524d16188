"""Shared test helpers: free ports and torchrun launches (real torch.distributed on gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

REPO_ROOT = Path(__file__).resolve().parents[1]
HF_CONFIG_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "hf_configs"  # hub config.json files (README there)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_command(script: str | Path, args, nproc: int, env: dict | None,
                      extra_torchrun_args: tuple[str, ...]) -> tuple[list[str], dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *extra_torchrun_args,
        str(script), *map(str, args),
    ]
    return cmd, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}


def _check_torchrun(proc: subprocess.CompletedProcess, script, args) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def torchrun(script: str | Path, *args: str, nproc: int = 2, timeout: int = 300, env: dict | None = None,
             extra_torchrun_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun on loopback with ``nproc`` processes; raise with output on failure."""
    cmd, full_env = _torchrun_command(script, args, nproc, env, extra_torchrun_args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO_ROOT)
    return _check_torchrun(proc, script, args)


class StartedTorchrun:
    """:func:`torchrun` started now; ``result()`` waits (and raises with the output on failure)."""

    def __init__(self, script: str | Path, *args: str, nproc: int = 2, timeout: int = 300, env: dict | None = None):
        cmd, full_env = _torchrun_command(script, args, nproc, env, ())
        self._script, self._args = script, args
        self._started = Started(cmd, env=full_env, timeout=timeout)

    def result(self) -> subprocess.CompletedProcess:
        return _check_torchrun(self._started.result(), self._script, self._args)


class Started:
    """A process started now and waited for later: independent single-process runs of a test module overlap
    on the machine's two cores (serially, one core would sit idle). Output goes to files, not pipes, so a
    child never blocks on a full pipe while nobody reads it."""

    def __init__(self, cmd: list[str], *, env: dict, cwd: Path | str = REPO_ROOT, timeout: int = 300,
                 preexec_fn=None):
        import tempfile

        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, text=True, env=env, cwd=cwd,
                                      preexec_fn=preexec_fn)
        self._timeout, self._result = timeout, None

    def result(self) -> subprocess.CompletedProcess:
        """The finished process (exit code, stdout, stderr), whatever its status."""
        if self._result is None:
            try:
                self._proc.wait(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise
            outputs = []
            for f in (self._out, self._err):
                f.seek(0)
                outputs.append(f.read())
                f.close()
            self._result = subprocess.CompletedProcess(self._proc.args, self._proc.returncode, *outputs)
        return self._result


@pytest.fixture
def hf_config_dir() -> Path:
    """The hub config.json files in tests/fixtures/hf_configs."""
    return HF_CONFIG_FIXTURES
