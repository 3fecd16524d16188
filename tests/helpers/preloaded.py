"""Python processes of the tests' launches forked from an interpreter that has torch imported already.

Every launched rank or entry script spends most of a tiny run importing torch, ``torch.distributed.tensor``
(megatron-core imports it) and ``torch._dynamo`` (torch's optimizers import it on first use): about 4 of
the 7 CPU seconds of a tiny pretraining rank, paid again by each of the suite's hundreds of processes. A
preloaded server (one per test process and import environment, started on first use) imports them once and
forks each process, which then runs its script as ``python [-u] SCRIPT ARGS`` would: ``__main__``,
``sys.argv``, ``sys.path`` (script folder, then the interpreter's), the given environment, working folder
and output files, stdin from /dev/null, fresh ``random`` / numpy seeds, default signal dispositions, and a
normal interpreter exit (exit handlers, a traceback and exit status 1 on an uncaught exception, -2 on
Ctrl-C). Nothing of mindspeed_llm or megatron-core is preloaded (torch's and third parties' modules that
megatron-core imports are, and transformers): the script's own import order and patches are unchanged.

What a preloaded server cannot give a launch is settled at its start: the variables read while torch is
imported (TORCH*, OMP_*, MALLOC_*, LD_*, PYTHON*, locale, ...). The servers are keyed by those: a launch
whose values differ gets its own server. What stays shared is the string-hash seed (the ranks of a launch
hash alike, as with PYTHONHASHSEED set). ``MINDSPEED_LLM_TEST_FRESH_PROCESSES=1`` starts every launch as a
fresh interpreter instead, as before.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

FRESH_ENV = "MINDSPEED_LLM_TEST_FRESH_PROCESSES"
# torch, then what megatron-core's import pulls in from torch and third parties (none of it ours or
# megatron-core's, none of it read at import from what the tests vary), and transformers (its HF_* and
# TRANSFORMERS_* settings are import-time, keyed below)
PRELOAD = ("torch", "torch.distributed.tensor", "torch._dynamo", "torch.distributed._tensor",
           "torch.utils.cpp_extension", "torch.utils.tensorboard", "yaml", "psutil", "tabulate",
           "transformers")
MAX_SERVERS = 4  # per test process: more distinct import environments run as fresh processes
# Environment variables that act before or while the preloaded modules are imported (the interpreter's start,
# glibc, OpenMP, torch, transformers): a launch is forked only from a server started with the same values.
_AT_IMPORT = re.compile(r"^(PYTHON|TORCH|PYTORCH|OMP_|GOMP|KMP_|MKL|OPENBLAS|LD_|MALLOC_|GLIBC|LC_|LANG|"
                        r"LANGUAGE$|CUDA|NVIDIA|ROCM|HIP_|TMPDIR$|TEMP$|TMP$|HOME$|XDG_|HF_|HUGGINGFACE|"
                        r"TRANSFORMERS|USE_TORCH$|USE_TF$|USE_JAX$|USE_FLAX$|SAFETENSORS)")


def _import_env(env: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if _AT_IMPORT.match(k)))


# ---- the client: the test process --------------------------------------------------------------------------


class _Server:
    """One preloaded interpreter (this module run as a script) and the exit statuses of its children."""

    def __init__(self, env: dict, unbuffered: bool):
        self.status_dir = tempfile.mkdtemp(prefix="preloaded-")
        flags = ["-u"] if unbuffered else []
        self.proc = subprocess.Popen([sys.executable, *flags, __file__, self.status_dir, *PRELOAD],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/")
        self._lock = threading.Lock()  # one request and its answer at a time on the pipes

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, request: dict) -> int | None:
        """The pid of the process started for ``request``; None when the server is gone."""
        try:
            with self._lock:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            return None
        return int(line) if line.strip() else None

    def status(self, pid: int) -> int | None:
        """The exit status of child ``pid`` once the server has reaped it (Popen's returncode convention)."""
        try:
            with open(os.path.join(self.status_dir, str(pid))) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            pass
        if not self.alive():  # its children are nobody's to reap now: gone is all that can be said
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return -signal.SIGKILL
        return None

    def close(self) -> None:
        import shutil

        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.status_dir, ignore_errors=True)


_servers: dict[tuple, _Server] = {}


def close_servers() -> None:
    """Stop this test process's servers (their launches have ended); the next launch starts one again."""
    for server in _servers.values():
        server.close()
    _servers.clear()


atexit.register(close_servers)


class ForkedProcess:
    """What the launch helpers use of ``subprocess.Popen`` (pid, args, returncode, poll, wait, terminate,
    kill) for a process forked by a preloaded server; its exit status comes from the server."""

    def __init__(self, server: _Server, pid: int, args: list[str]):
        self._server, self.pid, self.args, self.returncode = server, pid, args, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _script_command(cmd: list[str]) -> tuple[bool, str, list[str]] | None:
    """(unbuffered, script, args) of ``[sys.executable, [-u,] SCRIPT.py, ARGS...]``; None for another
    command."""
    cmd = [str(c) for c in cmd]
    if len(cmd) < 2 or cmd[0] != sys.executable:
        return None
    unbuffered = cmd[1] == "-u"
    rest = cmd[2:] if unbuffered else cmd[1:]
    if not rest or not rest[0].endswith(".py"):
        return None
    return unbuffered, rest[0], rest[1:]


def start(cmd: list[str], *, env: dict, cwd, stdout, stderr) -> ForkedProcess | None:
    """``cmd`` (``python [-u] SCRIPT.py ARGS``) forked from a preloaded server, its output appended to the
    files ``stdout`` and ``stderr`` (named temporary files); None when it must start as a fresh process
    (another command, FRESH_ENV set, too many import environments, a server that failed)."""
    parsed = _script_command(cmd)
    if parsed is None or os.environ.get(FRESH_ENV) == "1" or env.get(FRESH_ENV) == "1":
        return None
    unbuffered, script, args = parsed
    if not os.path.isfile(os.path.join(str(cwd), script)):
        return None  # python's own error message, from a new process
    key = (_import_env(env), unbuffered)
    server = _servers.get(key)
    if server is not None and not server.alive():
        server.close()
        del _servers[key]
        server = None
    if server is None:
        if len(_servers) >= MAX_SERVERS:
            return None
        server = _servers[key] = _Server(env, unbuffered)
    pid = server.fork({"script": script, "args": args,
                       "env": dict(env), "cwd": str(cwd), "stdout": stdout.name, "stderr": stderr.name})
    if pid is None:
        return None
    return ForkedProcess(server, pid, [str(c) for c in cmd])


# ---- the server --------------------------------------------------------------------------------------------


def _reap(status_dir: str) -> None:
    """Write the exit status of every finished child to ``status_dir/PID`` (written whole, then renamed)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        tmp = os.path.join(status_dir, f".{pid}")
        with open(tmp, "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.replace(tmp, os.path.join(status_dir, str(pid)))


def _serve(status_dir: str) -> dict | None:
    """Fork one child per request line on stdin (its pid answered on stdout) until stdin closes; returns the
    request in a child, None in the server once done."""
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.02)
        _reap(status_dir)
        if not ready:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                return request
            try:  # the status of an earlier child that had this pid
                os.unlink(os.path.join(status_dir, str(pid)))
            except FileNotFoundError:
                pass
            os.write(1, f"{pid}\n".encode())
    deadline = time.monotonic() + 60  # the test process has stopped its launches: reap what is left
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    return None


def _pythonpath(cwd: str) -> list[str]:
    """PYTHONPATH's entries as an interpreter started in ``cwd`` puts them on ``sys.path``: absolute, an
    empty or relative entry read from ``cwd``."""
    raw = os.environ.get("PYTHONPATH", "")
    return [os.path.abspath(os.path.join(cwd, entry)) for entry in raw.split(os.pathsep)] if raw else []


def _first_seen(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(paths))  # the interpreter's start drops later duplicates the same way


def _become(request: dict, base_path: list[str]) -> None:
    """In the forked child: what ``python [-u] SCRIPT ARGS`` in ``cwd`` with ``env`` would have (the server
    ran with the same -u: ``sys.stdin/stdout/stderr`` keep their buffering and, their buffers empty, now
    read and write the new file descriptors)."""
    import random

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(out, fd)
        os.close(out)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # chosen again from this environment
    script = request["script"]
    sys.argv = [script, *request["args"]]
    # PYTHONPATH is the server's too, but its empty or relative entries were read from the server's folder
    from_pythonpath = _pythonpath(os.getcwd())
    sys.path[:] = [os.path.dirname(os.path.abspath(script)), *_first_seen(from_pythonpath + base_path)]
    random.seed()  # (os.register_at_fork does it too) fresh seeds, as a new interpreter has
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()


def _main() -> None:
    import gc
    import importlib
    import runpy

    status_dir, modules = sys.argv[1], sys.argv[2:]
    sys.path.pop(0)  # this file's folder: a child's script puts its own there
    from_pythonpath = _first_seen(_pythonpath(os.getcwd()))
    base_path = list(sys.path)  # PYTHONPATH's entries, then the interpreter's
    if base_path[:len(from_pythonpath)] == from_pythonpath:
        base_path = base_path[len(from_pythonpath):]  # each child reads PYTHONPATH from its own folder
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # the children's collections skip the preloaded objects (and leave their pages shared)
    # a fresh interpreter keeps an ignored SIGINT ignored (a background job of a script starts so)
    inherited_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the test process's to handle
    request = _serve(status_dir)
    if request is None:
        return
    signal.signal(signal.SIGINT, inherited_sigint)
    _become(request, base_path)
    del status_dir, modules, base_path
    runpy.run_path(request["script"], run_name="__main__")


if __name__ == "__main__":
    _main()
