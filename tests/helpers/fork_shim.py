"""``python`` and ``torchrun`` on PATH, for a test's shell scripts only, that fork their processes from an
interpreter that has torch imported already.

A test that runs the project's bash scripts (the quick start's ten steps) starts a fresh interpreter per
``python`` and three per ``torchrun`` (its agent and two ranks): 4-6 CPU seconds of start-up each, most of
it importing torch. :func:`shim_env` starts a fork server (a UNIX socket; the modules of
:data:`tests.helpers.preloaded.PRELOAD` imported once) and writes two small executables into a temporary
``bin`` folder that the returned environment puts first on PATH:

- ``python [-u] SCRIPT ARGS``, ``python [-u] -m MOD ARGS``, ``python [-u] -c CODE ARGS``: the shim (a
  ``python -I -S`` of a few milliseconds) sends its stdin, stdout and stderr (``socket.send_fds``), its
  environment, working folder and SIGINT disposition; the server forks a child that runs the command as the
  interpreter would (``__main__``, ``sys.argv``, ``sys.path``, fresh stdio on those files with -u's
  buffering, fresh ``random`` seeds); the shim forwards SIGTERM/SIGINT/SIGHUP to it and exits with its
  status (128 + N for a signal N, as a shell reports it). Any other command line, an environment whose
  at-import variables differ from the server's (:data:`tests.helpers.preloaded._AT_IMPORT`) or a server
  that is gone: the real interpreter, exec'd with the same arguments.
- ``torchrun --nproc_per_node N [--nnodes 1 --node_rank 0 --master_addr A --master_port P] SCRIPT ARGS``:
  the N ranks forked as ``python -u SCRIPT ARGS`` with the environment torchrun's agent gives its workers
  (RANK, LOCAL_RANK, WORLD_SIZE, ... OMP_NUM_THREADS=1 when unset; rank 0 hosts the store at MASTER_PORT,
  as in :class:`tests.helpers.launch.StartedTorchrun`), sharing the shim's stdout and stderr. When one rank
  fails the others are stopped (SIGTERM, SIGKILL after 15 s) and the shim exits 1, as torchrun does.
  Other torchrun command lines (several nodes, its own flags), or a script named in
  ``FORK_SHIM_REAL_TORCHRUN`` (comma-separated file names), run the real torchrun.

Real torchrun and fresh interpreters stay covered by the tests that launch them directly
(tests/e2e/test_rank_output.py, tests/e2e/test_pretrain_resilience.py, tests/examples/test_doc_commands.py).
This module's top level imports only the standard library: the shim imports it at every launch.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import sys
import time

SOCKET_ENV = "FORK_SHIM_SOCKET"
REAL_TORCHRUN_ENV = "FORK_SHIM_REAL_TORCHRUN"
_THIS_FILE = os.path.abspath(__file__)
_HERE = os.path.dirname(_THIS_FILE)
_MAX_MESSAGE = 1 << 20
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# ---- the shims -------------------------------------------------------------------------------------------


def _parse_python(argv: list[str]) -> dict | None:
    """{"kind": script|module|code, "target", "args", "unbuffered"} of ``python`` arguments; None for any
    other form (interactive, stdin, options other than -u)."""
    unbuffered, i = False, 0
    while i < len(argv) and argv[i] == "-u":
        unbuffered, i = True, i + 1
    if i >= len(argv):
        return None
    head = argv[i]
    if head in ("-m", "-c"):
        if i + 1 >= len(argv):
            return None
        kind = "module" if head == "-m" else "code"
        return {"kind": kind, "target": argv[i + 1], "args": argv[i + 2:], "unbuffered": unbuffered}
    if head.startswith("-") or not os.path.isfile(head):
        return None  # another option, or python's own error message for a missing file
    return {"kind": "script", "target": head, "args": argv[i + 1:], "unbuffered": unbuffered}


def _connect(request: dict, fds: tuple[int, int, int] = (0, 1, 2)) -> tuple[socket.socket, int] | None:
    """(connection, child pid) of ``request`` forked by the server; None when it must run for real."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
        socket.send_fds(sock, [json.dumps(request).encode()], list(fds))
        answer = json.loads(sock.recv(_MAX_MESSAGE) or b"{}")
    except OSError:
        return None
    if "pid" not in answer:
        sock.close()
        return None
    return sock, answer["pid"]


def _request(parsed: dict, env: dict) -> dict:
    return {**parsed, "env": env, "cwd": os.getcwd(),
            "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}


def _status(sock: socket.socket) -> int | None:
    """The child's exit status from the server (Popen's convention); None when the server is gone."""
    try:
        data = sock.recv(_MAX_MESSAGE)
    except OSError:
        return None
    return json.loads(data)["status"] if data else None


def _exit_code(status: int | None) -> int:
    """``status`` as the shim's own: a child killed by signal N kills the shim by N (the shell reports it as
    it reports a killed interpreter)."""
    if status is None:
        return 1
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def _forward_signals(pids: list[int], sigint_ignored: bool) -> None:
    def forward(signum, _frame):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in _FORWARDED:
        if sig == signal.SIGINT and sigint_ignored:
            continue
        signal.signal(sig, forward)


def shim_python(real: str, argv: list[str]) -> int:
    """The ``python`` shim: the command forked by the server, else the real interpreter exec'd."""
    parsed = _parse_python(argv)
    connected = None if parsed is None else _connect(_request(parsed, dict(os.environ)))
    if connected is None:
        os.execv(real, [real, *argv])
    sock, pid = connected
    _forward_signals([pid], signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    return _exit_code(_status(sock))


_TORCHRUN_VALUE_FLAGS = {"nproc_per_node": "nproc", "nnodes": "nnodes", "node_rank": "node_rank",
                         "master_addr": "addr", "master_port": "port"}


def _parse_torchrun(argv: list[str]) -> dict | None:
    """torchrun's one-node command line: {"nproc", "addr", "port", "script", "args"}; None for another."""
    opts = {"nproc": "1", "nnodes": "1", "node_rank": "0", "addr": "127.0.0.1", "port": "29500"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, _, value = argv[i].lstrip("-").partition("=")
        key = _TORCHRUN_VALUE_FLAGS.get(name.replace("-", "_"))
        if key is None:
            return None  # a flag of torchrun's own that the shim does not give: the real torchrun
        if not value:
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 1
        opts[key] = value
        i += 1
    if i >= len(argv) or opts["nnodes"] != "1" or opts["node_rank"] != "0" or not opts["nproc"].isdigit():
        return None
    if argv[i].startswith("-") or not argv[i].endswith(".py") or not os.path.isfile(argv[i]):
        return None
    return {**opts, "nproc": int(opts["nproc"]), "script": argv[i], "args": argv[i + 1:]}


def _rank_env(rank: int, nproc: int, addr: str, port: str) -> dict:
    """What torchrun's agent (static rendezvous, one node) adds to a worker's environment; rank 0 hosts the
    store (no agent store)."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env and nproc > 1:
        env["OMP_NUM_THREADS"] = "1"
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
                "ROLE_NAME": "default", "LOCAL_WORLD_SIZE": str(nproc), "WORLD_SIZE": str(nproc),
                "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": str(nproc), "MASTER_ADDR": addr,
                "MASTER_PORT": port, "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
                "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "False"})
    return env


def shim_torchrun(real: str, argv: list[str]) -> int:
    """The ``torchrun`` shim: the ranks forked by the server, else the real torchrun exec'd."""
    parsed = _parse_torchrun(argv)
    real_for = [s for s in os.environ.get(REAL_TORCHRUN_ENV, "").split(",") if s]
    if parsed is not None and os.path.basename(parsed["script"]) in real_for:
        parsed = None
    ranks: list[tuple[socket.socket, int]] = []
    if parsed is not None:
        for rank in range(parsed["nproc"]):
            request = _request({"kind": "script", "target": parsed["script"], "args": parsed["args"],
                                "unbuffered": True},
                               _rank_env(rank, parsed["nproc"], parsed["addr"], parsed["port"]))
            connected = _connect(request)
            if connected is None:
                break
            ranks.append(connected)
    if parsed is None or len(ranks) < parsed["nproc"]:
        for sock, pid in ranks:  # a server gone half-way: nothing of this launch is left running
            os.kill(pid, signal.SIGKILL)
            _status(sock)
        os.execv(real, [real, *argv])
    pids = [pid for _, pid in ranks]
    _forward_signals(pids, signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    statuses: dict[int, int | None] = {}
    failed, deadline = None, None
    while len(statuses) < len(ranks):
        open_socks = [sock for sock, pid in ranks if pid not in statuses]
        ready, _, _ = select.select(open_socks, [], [], 0.5)
        for sock in ready:
            pid = next(p for s, p in ranks if s is sock)
            statuses[pid] = status = _status(sock)
            if status != 0 and failed is None:
                failed = (pids.index(pid), status)
                for other in pids:  # torchrun stops the other workers of a failed group
                    if other not in statuses:
                        try:
                            os.kill(other, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                deadline = time.monotonic() + 15
        if deadline is not None and time.monotonic() > deadline:
            for other in pids:
                if other not in statuses:
                    try:
                        os.kill(other, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            deadline = None
    if failed is not None:
        rank, status = failed
        print(f"torchrun (fork shim): rank {rank} ({parsed['script']}) failed with exit status {status}",
              file=sys.stderr)
        return 1
    return 0


# ---- the server ------------------------------------------------------------------------------------------


def _stdio(unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr on file descriptors 0-2 as a new interpreter builds them (-u: unbuffered)."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=encoding,
                                                 errors=errors)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        tty = raw.isatty()
        buf = raw if unbuffered else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buf, encoding=encoding,
                                  errors="backslashreplace" if fd == 2 else errors,
                                  line_buffering=not unbuffered and (tty or fd == 2),
                                  write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _become(request: dict, fds: list[int], base_path: list[str]) -> None:
    """In the forked child: what ``python [-u] ...`` started by the shim would have."""
    import random
    import tempfile
    import types

    from preloaded import _first_seen, _pythonpath

    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    _stdio(request["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED")))
    kind, target = request["kind"], request["target"]
    first = {"script": os.path.dirname(os.path.abspath(target)), "module": os.getcwd(), "code": ""}[kind]
    sys.path[:] = [first, *_first_seen(_pythonpath(os.getcwd()) + base_path)]
    sys.argv = [{"script": target, "module": target, "code": "-c"}[kind], *request["args"]]
    random.seed()  # fresh seeds, as a new interpreter has (numpy is preloaded: its global generator too)
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    signal.signal(signal.SIGINT, signal.SIG_IGN if request["sigint_ignored"] else signal.default_int_handler)
    sys.modules["__main__"] = types.ModuleType("__main__")


def _run(request: dict) -> None:
    import runpy

    kind, target = request["kind"], request["target"]
    if kind == "script":
        runpy.run_path(os.path.abspath(target), run_name="__main__")
    elif kind == "module":
        runpy._run_module_as_main(target, alter_argv=True)
    else:
        main = sys.modules["__main__"]
        main.__dict__["__builtins__"] = __builtins__
        exec(compile(target, "<string>", "exec"), main.__dict__)


def _at_import(env: dict) -> tuple:
    """The variables of ``env`` that act while the preloaded modules are imported, less TORCHELASTIC_* (what
    torchrun's agent tells its workers, read by torch.distributed.elastic when it runs, not at import)."""
    from preloaded import _import_env

    return _import_env({k: v for k, v in env.items() if not k.startswith("TORCHELASTIC_")})


def _serve(listener: socket.socket, own_env: tuple) -> tuple[dict, list[int]] | None:
    """Fork one child per request whose at-import variables are ``own_env`` (the server's, before its
    imports) until stdin closes; returns (request, fds) in a child, None in the server once its children have
    ended."""
    by_pid: dict[int, socket.socket] = {}
    conns: dict[socket.socket, int | None] = {}
    stopping = False
    while not stopping or by_pid:
        watched = [*conns, *([] if stopping else [listener, sys.stdin.fileno()])]
        ready, _, _ = select.select(watched, [], [], 0.02)
        while by_pid:  # reap: each finished child's status to its shim
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = by_pid.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
                except OSError:
                    pass
                conn.close()
                conns.pop(conn, None)
        for item in ready:
            if item == sys.stdin.fileno():
                if not os.read(item, 1 << 16):
                    stopping = True
            elif item is listener:
                conn, _ = listener.accept()
                conns[conn] = None
            elif item in conns:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(item, _MAX_MESSAGE, 3)
                except OSError:
                    data, fds = b"", []
                pid = conns[item]
                if not data:  # the shim is gone (killed): so is what it stood for
                    if pid is not None and pid in by_pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        by_pid[pid] = None
                    conns.pop(item)
                    item.close()
                    continue
                request = json.loads(data)
                if len(fds) != 3 or _at_import(request["env"]) != own_env:
                    for fd in fds:
                        os.close(fd)
                    item.send(json.dumps({"fallback": "environment"}).encode())
                    conns.pop(item)
                    item.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in conns:
                        other.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                conns[item] = pid
                by_pid[pid] = item
                item.send(json.dumps({"pid": pid}).encode())
    return None


def _server_main() -> None:
    import gc
    import importlib

    from preloaded import PRELOAD, _first_seen, _pythonpath

    socket_path = sys.argv[1]
    sys.path.pop(0)  # this file's folder (preloaded is imported already)
    from_pythonpath = _first_seen(_pythonpath(os.getcwd()))
    base_path = list(sys.path)
    if base_path[:len(from_pythonpath)] == from_pythonpath:
        base_path = base_path[len(from_pythonpath):]
    own_env = _at_import(dict(os.environ))  # before the imports (torch sets some of its own)
    for name in PRELOAD:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the test process's to handle
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    listener.listen(64)
    print("ready", flush=True)
    child = _serve(listener, own_env)
    if child is None:
        listener.close()
        return
    request, fds = child
    _become(request, fds, base_path)
    del child, listener, socket_path
    try:
        _run(request)
    except (SystemExit, KeyboardInterrupt):
        raise  # the interpreter's own exit (status, or -2 on Ctrl-C)
    except BaseException as exc:  # the traceback from the command's own frames, then status 1, as python
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (_THIS_FILE, _runpy_file()):
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        sys.exit(1)


def _runpy_file() -> str:
    import runpy

    return runpy.__file__


# ---- the test side ---------------------------------------------------------------------------------------


_SHIM = """#!{python} -IS
import sys
sys.path.insert(0, {here!r})
import fork_shim
sys.exit(fork_shim.{function}({real!r}, sys.argv[1:]))
"""


class ShimServer:
    """A fork server and its shims' ``bin`` folder under ``folder``; :meth:`env` is an environment that
    uses them; :meth:`close` stops the server once its children have ended."""

    def __init__(self, folder, env: dict):
        import shutil
        import subprocess

        folder = os.path.abspath(str(folder))
        self.bin = os.path.join(folder, "bin")
        os.makedirs(self.bin, exist_ok=True)
        self.socket = os.path.join(folder, "fork.sock")
        python = sys.executable
        torchrun = shutil.which("torchrun", path=os.path.dirname(python)) or shutil.which("torchrun")
        for name, function, real in (("python", "shim_python", python), ("python3", "shim_python", python),
                                     ("torchrun", "shim_torchrun", torchrun)):
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(_SHIM.format(python=python, here=_HERE, function=function, real=real))
            os.chmod(path, 0o755)
        self.python, self.torchrun = os.path.join(self.bin, "python"), os.path.join(self.bin, "torchrun")
        self.server_env = dict(env)
        self.proc = subprocess.Popen([python, os.path.join(_HERE, "fork_shim.py"), self.socket],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.server_env,
                                     cwd="/")
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the fork server did not start")

    def env(self, **more: str) -> dict:
        """The server's environment with the shims first on PATH."""
        env = {**self.server_env, **more}
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        env[SOCKET_ENV] = self.socket
        return env

    def close(self) -> None:
        import subprocess

        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    _server_main()
