"""The launch helpers' preloaded processes (tests/helpers/preloaded.py) against fresh interpreters: the same
script, command line, environment and working folder give the same view of the process (argv, sys.path,
environment, cwd, __main__, stdin, signals, buffering) and the same exit statuses, output and tracebacks.
The fork shim's ``python`` and ``torchrun`` (tests/helpers/fork_shim.py) fork from their server, report the
child's status as a shell sees it, fall back to the real interpreter, and stop a failed launch's other
ranks."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.helpers import preloaded
from tests.helpers.launch import Started, StartedTorchrun

SCRIPT = r'''
import json, os, signal, sys
import numpy as np
mode = sys.argv[1]
if mode == "view":
    print(json.dumps({
        "argv": sys.argv, "path0": sys.path[0], "pythonpath": sys.path[1:3], "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("PROBE", "RANK", "WORLD_SIZE")},
        "main_file": sys.modules["__main__"].__file__, "name": __name__,
        "stdin": sys.stdin.read(), "sigint": str(signal.getsignal(signal.SIGINT)),
        "sigterm": str(signal.getsignal(signal.SIGTERM)), "write_through": sys.stdout.write_through,
        "numpy_draw": float(np.random.random()), "ppid_is_pytest": os.getppid() == int(sys.argv[2]),
    }))
elif mode == "exit":
    print("before exit", flush=True)
    sys.exit(int(sys.argv[2]))
elif mode == "raise":
    raise ValueError("the script failed")
elif mode == "term":
    os.kill(os.getpid(), signal.SIGTERM)
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    preloaded.close_servers()  # earlier files' servers count towards MAX_SERVERS
    path = tmp_path_factory.mktemp("preloaded") / "probe.py"
    path.write_text(SCRIPT)
    return path


def _import_env(script) -> dict:
    """The at-import variables of this file's launches: one preloaded server serves them all (each server
    imports torch, about 5 CPU s); a test that needs another server sets another value."""
    return {"PYTHONPATH": f"{script.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def _run(script, *args, fresh: bool, cwd, env=None):
    env = {**os.environ, **_import_env(script), "PROBE": "x", **(env or {}),
           preloaded.FRESH_ENV: "1" if fresh else "0"}
    started = Started([sys.executable, "-u", str(script), *map(str, args)], env=env, cwd=cwd, timeout=120)
    assert isinstance(started._proc, preloaded.ForkedProcess) != fresh
    return started.result()


def test_a_preloaded_process_sees_what_a_fresh_interpreter_sees(script, tmp_path):
    views = {}
    for fresh in (True, False, False):
        proc = _run(script, "view", os.getpid(), fresh=fresh, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        views.setdefault(fresh, []).append(json.loads(proc.stdout))
    fresh_view, forked, forked_again = views[True][0], *views[False]
    draws = {v["numpy_draw"] for v in (fresh_view, forked, forked_again)}
    assert len(draws) == 3, "numpy's global generator is seeded afresh in every process"
    assert fresh_view["ppid_is_pytest"] and not forked["ppid_is_pytest"]  # the launch did go through a server
    same = [k for k in fresh_view if k not in ("numpy_draw", "ppid_is_pytest")]
    for view in (forked, forked_again):
        assert {k: view[k] for k in same} == {k: fresh_view[k] for k in same}
    assert fresh_view["argv"] == [str(script), "view", str(os.getpid())]
    assert fresh_view["cwd"] == str(tmp_path) and fresh_view["path0"] == str(script.parent)
    assert fresh_view["name"] == "__main__" and fresh_view["stdin"] == ""


@pytest.mark.parametrize("args, status, out, err", [
    (("exit", 0), 0, "before exit\n", None),
    (("exit", 3), 3, "before exit\n", None),
    (("raise",), 1, "", "ValueError: the script failed"),
    (("term",), -signal.SIGTERM, "", None),
])
def test_exit_status_output_and_traceback_as_fresh(script, tmp_path, args, status, out, err):
    for fresh in (True, False):
        proc = _run(script, *args, fresh=fresh, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (status, out), (fresh, proc.stderr)
        if err:
            assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith(err), proc.stderr


def test_ranks_of_a_launch_are_forked_and_stopped_together(script, tmp_path, monkeypatch):
    """A failing rank stops the others (terminated through their pid) and the launch reports its status."""
    monkeypatch.setenv(preloaded.FRESH_ENV, "0")
    slow = tmp_path / "rank.py"
    slow.write_text("import os, sys, time\nif os.environ['RANK'] == '0':\n    sys.exit(5)\ntime.sleep(300)\n")
    launch = StartedTorchrun(slow, nproc=2, timeout=120, env=_import_env(script))
    assert all(isinstance(p, preloaded.ForkedProcess) for p in launch._procs)
    result = launch.result(check=False)
    assert result.returncode == 5
    assert launch._procs[1].returncode == -signal.SIGTERM


def test_a_launch_with_another_import_environment_gets_its_own_server(script, tmp_path):
    """Variables read while torch is imported (here OMP_NUM_THREADS) pick the server: a launch never inherits
    another's."""
    for threads in ("1", "2"):  # 1: the server of the tests above; 2: a new one
        proc = _run(script, "exit", 0, fresh=False, cwd=tmp_path, env={"OMP_NUM_THREADS": threads})
        assert proc.returncode == 0
    keys = [dict(key[0]).get("OMP_NUM_THREADS") for key in preloaded._servers]
    assert {"1", "2"} <= set(keys)


# ---- the fork shim (tests/helpers/fork_shim.py): `python` and `torchrun` on PATH for a test's scripts ----

_SHIM_PROBE = r'''
import os, sys
mode = sys.argv[1]
if mode == "parent":
    print(os.getppid(), sys.argv[2:], __name__)
elif mode == "rank":  # rank 1 fails, rank 0 would wait for a minute
    if os.environ["RANK"] == "1":
        sys.exit(3)
    import time
    time.sleep(60)
'''


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    from tests.helpers.fork_shim import ShimServer
    from tests.helpers.paths import REPO_ROOT

    server = ShimServer(tmp_path_factory.mktemp("fork_shim"),
                        {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    yield server
    server.close()


def _bash(shim, tmp_path, line: str, **env: str):
    import subprocess

    (tmp_path / "probe.py").write_text(_SHIM_PROBE)
    return subprocess.run(["bash", "-c", line], cwd=tmp_path, env=shim.env(**env), capture_output=True,
                          text=True, timeout=120)


def test_fork_shim_forks_python_scripts_modules_and_code_from_its_server(shim, tmp_path):
    forked = _bash(shim, tmp_path, "python -u probe.py parent a b")
    assert forked.returncode == 0, forked.stderr
    ppid, rest = forked.stdout.split(" ", 1)
    assert int(ppid) == shim.proc.pid and rest.strip() == "['a', 'b'] __main__"
    assert _bash(shim, tmp_path, "echo '{\"a\": 1}' | python -m json.tool --compact").stdout == '{"a":1}\n'
    draw = "python -c 'import numpy; print(numpy.random.random())'"
    draws = _bash(shim, tmp_path, f"{draw}; {draw}")
    assert len(set(draws.stdout.split())) == 2, "numpy's global generator is seeded afresh in every process"
    code = _bash(shim, tmp_path, "python -c 'import sys; print(sys.argv[1:]); sys.exit(3)' x; echo rc=$?")
    assert code.stdout == "['x']\nrc=3\n"
    raised = _bash(shim, tmp_path, "python -c 'raise ValueError(\"boom\")'")
    assert raised.returncode == 1 and raised.stderr.rstrip().endswith("ValueError: boom")
    killed = _bash(shim, tmp_path, "python -c 'import os, signal; os.kill(os.getpid(), signal.SIGTERM)'; "
                                   "echo rc=$?")
    assert killed.stdout == "rc=143\n"
    # another at-import environment: the real interpreter, exec'd in the shim's place (its parent is bash)
    fresh = _bash(shim, tmp_path, "python -u probe.py parent; echo bash=$$", OMP_NUM_THREADS="2")
    lines = fresh.stdout.split("\n")
    assert int(lines[0].split()[0]) == int(lines[1].split("=")[1]) != shim.proc.pid


def test_fork_shim_torchrun_stops_the_other_ranks_when_one_fails(shim, tmp_path):
    import time

    started = time.monotonic()
    proc = _bash(shim, tmp_path, "torchrun --nproc_per_node 2 --master_port 29599 probe.py rank; echo rc=$?")
    assert proc.stdout == "rc=1\n", proc.stderr
    assert "rank 1 (probe.py) failed with exit status 3" in proc.stderr
    assert time.monotonic() - started < 30  # rank 0 was stopped, not waited for (it sleeps 60 s)
