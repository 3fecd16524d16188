"""Launching test processes: free ports, torchrun's workers without its agent, torchrun's own command, and
single processes started now and waited for later (real torch.distributed on gloo, never mocked)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO_ROOT


def _ephemeral_floor() -> int:
    """The lowest port of the kernel's range for the local side of outgoing connections (Linux; else
    32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return min(int(f.read().split()[0]), 32768)
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, below the ephemeral range.

    A port the kernel hands out for binding port 0 comes from the ephemeral range, which gloo's rank-to-rank
    connections also draw from: with launches running side by side (pytest-xdist), one launch's store port
    was taken by another's connection in the moment between choosing and binding it (EADDRINUSE). Below
    the range, only another free_port() can pick it, at random among thousands of ports.
    """
    low = _ephemeral_floor()
    if low < 16000:  # a machine whose ephemeral range starts low: the kernel's choice, as before
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    pick = random.SystemRandom()
    for _ in range(100):
        port = pick.randrange(15000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port between 15000 and {low} on 127.0.0.1")


def _rank_env(rank: int, nproc: int, port: int, env: dict | None) -> dict:
    """What torchrun's agent puts in the environment of worker ``rank`` of a one-node world of ``nproc``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {}),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _output_files():
    """The stdout and stderr of a launch: temporary files (removed when closed), named so that a process
    forked by a preloaded server (:mod:`tests.helpers.preloaded`) can open them."""
    import tempfile

    return tempfile.NamedTemporaryFile("w+"), tempfile.NamedTemporaryFile("w+")


def _popen(cmd: list[str], *, env: dict, cwd, stdout, stderr, preexec_fn=None):
    """``cmd`` started now: forked from a preloaded interpreter when it is ``python [-u] SCRIPT.py ...``
    (:mod:`tests.helpers.preloaded`: torch is imported once, not by every process), else a new process."""
    from tests.helpers import preloaded

    proc = None if preexec_fn is not None else preloaded.start(cmd, env=env, cwd=cwd, stdout=stdout,
                                                                 stderr=stderr)
    return proc or subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, cwd=cwd, env=env,
                                    preexec_fn=preexec_fn)


def _check_torchrun(proc: subprocess.CompletedProcess, script, args) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def _read_and_close(*files) -> list[str]:
    """The whole text of each temporary output file, which is then closed (and so removed)."""
    texts = []
    for f in files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts


class StartedTorchrun:
    """``script`` started now as the ``nproc`` worker processes torchrun would start on one node (real
    torch.distributed on gloo, rank 0 hosting the rendezvous store at MASTER_PORT), without torchrun's
    agent: the agent is one more interpreter that imports torch per launch (~1.5 CPU s of the ~100
    launches' start-up, docs/performance_journal.md). Like torchrun, the ranks run ``python -u`` and share
    one stdout and one stderr, and when one fails the others are stopped. The ranks are forked from a
    preloaded interpreter (:mod:`tests.helpers.preloaded`). Tests of torchrun itself (rank output, signals,
    multi-node) build its command (:func:`torchrun_command`). ``result()`` waits and raises with the output
    on failure."""

    def __init__(self, script: str | Path, *args: str, nproc: int = 2, timeout: int = 300,
                 env: dict | None = None, cwd: Path | str = REPO_ROOT):
        self._script, self._args, self._timeout, self._result = script, args, timeout, None
        self._out, self._err = _output_files()
        port = free_port()
        cmd = [sys.executable, "-u", str(script), *map(str, args)]
        self._procs = [_popen(cmd, stdout=self._out, stderr=self._err, cwd=cwd,
                              env=_rank_env(rank, nproc, port, env)) for rank in range(nproc)]

    def _stop(self) -> None:
        """Terminate the ranks still running (SIGKILL after 15 s) and reap them all."""
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _wait(self) -> int:
        """Every rank's end (the others are stopped once one fails); the first failing exit status, else 0.
        On a timeout, or an exception here (Ctrl-C, pytest-timeout), no rank is left behind."""
        import time

        deadline, failed = time.monotonic() + self._timeout, 0
        try:
            while any(p.poll() is None for p in self._procs):
                failed = next((p.returncode for p in self._procs if p.returncode not in (None, 0)), 0)
                if failed:
                    break
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired([str(self._script), *self._args], self._timeout)
                time.sleep(0.05)
        finally:
            self._stop()
        return failed or next((p.returncode for p in self._procs if p.returncode != 0), 0)

    def result(self, check: bool = True) -> subprocess.CompletedProcess:
        """The finished launch; ``check``: raise with the output unless every rank exited 0 (a test of a
        refusal passes False and reads the exit status itself)."""
        if self._result is None:
            code = self._wait()
            self._result = subprocess.CompletedProcess([str(self._script), *self._args], code,
                                                       *_read_and_close(self._out, self._err))
        return _check_torchrun(self._result, self._script, self._args) if check else self._result


def torchrun(script: str | Path, *args: str, nproc: int = 2, timeout: int = 300,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` as torchrun's ``nproc`` workers on loopback (:class:`StartedTorchrun`) and wait; raise
    with the output on failure."""
    return StartedTorchrun(script, *args, nproc=nproc, timeout=timeout, env=env).result()


class Started:
    """A process started now and waited for later: independent single-process runs of a test module overlap
    on the machine's two cores (serially, one core would sit idle). Output goes to files, not pipes, so a
    child never blocks on a full pipe while nobody reads it. ``python SCRIPT.py ...`` without
    ``preexec_fn`` is forked from a preloaded interpreter (:mod:`tests.helpers.preloaded`)."""

    def __init__(self, cmd: list[str], *, env: dict, cwd: Path | str = REPO_ROOT, timeout: int = 300,
                 preexec_fn=None):
        self._out, self._err = _output_files()
        self._proc = _popen(cmd, stdout=self._out, stderr=self._err, env=env, cwd=cwd, preexec_fn=preexec_fn)
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
            self._result = subprocess.CompletedProcess(self._proc.args, self._proc.returncode,
                                                       *_read_and_close(self._out, self._err))
        return self._result


def torchrun_command(script: str | Path, *args: str, nproc: int = 1, port: int | None = None, nnodes: int = 1,
                     node_rank: int = 0, torchrun_args: tuple[str, ...] = ()) -> list[str]:
    """torchrun's own command (its agent starting ``nproc`` workers of ``script``) on loopback, for tests of
    torchrun itself (signals, rank output, several nodes, its exit report); ``port``: :func:`free_port`
    when None.

    ``nnodes`` > 1: one node's command (``node_rank``); every node takes the same ``port``.
    ``torchrun_args``: more of torchrun's own flags (``--log-dir``, ``--redirects``, ...), before the script.
    """
    nodes = ["--nnodes", str(nnodes), "--node-rank", str(node_rank)] if nnodes != 1 else []
    return [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port() if port is None else port),
            *torchrun_args, str(script), *map(str, args)]


def run_python(code: str, folder: Path | str, *args, env: dict | None = None, name: str = "snippet.py",
               timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -c code ARGS`` without a fresh interpreter: ``code`` is written to ``folder/name`` and run as
    ``python -u folder/name ARGS`` in ``folder``, forked from a preloaded interpreter (:class:`Started`; torch
    and transformers are imported already, nothing of mindspeed_llm or megatron-core). ``folder`` is first on
    the child's ``sys.path``, as a ``PYTHONPATH`` entry would be (a package there, such as a stand-in, is
    found).
    ``env``: added to this process's environment (with ``OMP_NUM_THREADS=1`` and the repository on
    ``PYTHONPATH``, as the launches have). Returns the finished process whatever its status. A check that
    needs an interpreter without torch preloaded (what an import loads) runs ``python -c`` itself."""
    script = Path(folder) / name
    script.write_text(code)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return Started([sys.executable, "-u", str(script), *map(str, args)], env=full_env, cwd=folder,
                   timeout=timeout).result()


def _launch_processes(launch: Started | StartedTorchrun) -> list:
    return list(launch._procs) if isinstance(launch, StartedTorchrun) else [launch._proc]


def output_so_far(launch: Started | StartedTorchrun) -> str:
    """What a launch still running has written to its stdout so far (the ranks' shared stdout)."""
    with open(launch._out.name) as f:
        return f.read()


def wait_for_output(launch: Started | StartedTorchrun, text: str, timeout: float = 240) -> str:
    """Wait until ``text`` is in the stdout of a launch still running (polled every 20 ms, as a reader of a
    pipe would see it); returns the stdout so far. Raises with the output when every process ended first or
    after ``timeout`` seconds (the launch is then stopped)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        out = output_so_far(launch)
        if text in out:
            return out
        procs = _launch_processes(launch)
        if all(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            codes = [p.poll() for p in procs]
            for p in procs:
                if p.poll() is None:
                    p.kill()
            with open(launch._err.name) as f:
                err = f.read()
            raise AssertionError(f"{text!r} never came (exit statuses {codes}):\n{out[-3000:]}\n"
                                 f"{err[-3000:]}")
        time.sleep(0.02)


def launch_pids(launch: Started | StartedTorchrun) -> list[int]:
    """The process ids of a launch (its ranks, in rank order)."""
    return [p.pid for p in _launch_processes(launch)]


def signal_launch(launch: Started | StartedTorchrun, sig: int) -> None:
    """Send ``sig`` to every process of a launch still running (as a scheduler signals every task)."""
    for p in _launch_processes(launch):
        p.send_signal(sig)


def exit_statuses(launch: Started | StartedTorchrun, timeout: float = 120) -> list[int]:
    """Each process's exit status (Popen's convention: -N for a signal), once all have ended; none is left
    running after ``timeout`` seconds (SIGKILL)."""
    import time

    procs, deadline = _launch_processes(launch), time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


class StartedScript(Started):
    """``python -u SCRIPT.py ARGS`` started now in ``cwd`` (forked from a preloaded interpreter, as
    :class:`Started`; ``-u`` and ``OMP_NUM_THREADS=1`` as the torchrun launches, so one server serves both),
    with what helpers written for ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)`` use of it
    (tests/tool_process.py's signal stepping, the tests of processes left behind): ``pid``, ``returncode``,
    ``poll()``, ``wait()``, ``send_signal()``, ``kill()``, ``communicate(timeout=)`` -> (stdout, stderr), and
    ``stdout`` / ``stderr`` whose ``read()`` returns the whole output once the process has ended."""

    def __init__(self, script: str | Path, *args, env: dict | None = None, cwd: Path | str = REPO_ROOT,
                 timeout: int = 300):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
               "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        super().__init__([sys.executable, "-u", str(script), *map(str, args)], env=env, cwd=cwd,
                         timeout=timeout)

    pid = property(lambda self: self._proc.pid)
    returncode = property(lambda self: self._proc.returncode)
    stdout = property(lambda self: _OutputAtEnd(self, 0))
    stderr = property(lambda self: _OutputAtEnd(self, 1))

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._proc.wait(timeout=timeout)

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    def kill(self) -> None:
        self._proc.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait (at most ``timeout`` seconds, else ``subprocess.TimeoutExpired``) and return its output."""
        self._proc.wait(timeout=timeout)
        done = self.result()
        return done.stdout, done.stderr


class _OutputAtEnd:
    """``read()``: stdout (0) or stderr (1) of a :class:`StartedScript` (waits for its end)."""

    def __init__(self, started: StartedScript, which: int):
        self._started, self._which = started, which

    def read(self) -> str:
        return self._started.communicate()[self._which]


def run_node_workers(script: str | Path, node_args: list[list[str]], folder: Path,
                     timeout: int = 240) -> list[str]:
    """A ``--nnodes`` job on loopback without torchrun's agents: node ``i``'s one worker, with the environment
    torchrun gives it (RANK = GROUP_RANK = ``i``, LOCAL_RANK 0, LOCAL_WORLD_SIZE 1, WORLD_SIZE the number
    of nodes), runs ``script`` with ``node_args[i]`` in ``folder/node{i}`` (its own storage), forked from a
    preloaded interpreter. When one node fails the others are stopped. Returns each node's output (stdout,
    then stderr); raises with a node's error lines when it failed."""
    import time

    port, nodes = free_port(), len(node_args)
    envs = [{**_rank_env(i, nodes, port, None), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
             "GROUP_RANK": str(i), "GROUP_WORLD_SIZE": str(nodes)} for i in range(nodes)]
    workers = [StartedScript(script, *args, cwd=folder / f"node{i}", timeout=timeout, env=envs[i])
               for i, args in enumerate(node_args)]
    deadline = time.monotonic() + timeout
    try:
        while any(w.poll() is None for w in workers):
            if any(w.poll() not in (None, 0) for w in workers) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    outs = [out + err for out, err in (w.communicate(timeout=30) for w in workers)]
    for node, (worker, out) in enumerate(zip(workers, outs)):
        errors = [line for line in out.splitlines() if "rror" in line]
        assert worker.returncode == 0, f"node {node} failed ({worker.returncode}):\n" + (
            "\n".join(errors) or out[-5000:])
    return outs


# ``python -u WITH_FILE_SIZE_LIMIT BYTES SCRIPT.py ARGS``: SCRIPT under a file-size limit (a full disk),
# startable as a script, so forked (a preexec_fn setting the limit would need a fresh interpreter)
WITH_FILE_SIZE_LIMIT = REPO_ROOT / "tests" / "e2e" / "scripts" / "with_file_size_limit.py"


def with_file_size_limit(script: str | Path, limit: int) -> list[str]:
    """``[WITH_FILE_SIZE_LIMIT, limit, script]``: with :class:`StartedScript`, ``script`` runs (forked, as
    any ``python SCRIPT.py``) with a file-size limit of ``limit`` bytes set before it starts (what
    ``tests.tool_process.run_tool``'s ``fsize`` does in a fresh interpreter). Its output files count against
    the limit too: for a tool that prints a few lines."""
    return [str(WITH_FILE_SIZE_LIMIT), str(limit), str(script)]
