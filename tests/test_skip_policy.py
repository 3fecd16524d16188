"""tests/skip_policy.py: a skip for absent hardware passes; any other skip fails the run (checked on a
throw-away test file in a separate pytest session, run in this process by pytest's pytester)."""

from __future__ import annotations

import subprocess
import textwrap

from tests.skip_policy import requires_cuda

pytest_plugins = ["pytester"]

_CASES = '''
import pytest

from tests.skip_policy import requires_cuda, skip_for_hardware


def test_passes():
    pass


@pytest.mark.skipif(True, reason="hardware: needs a CUDA GPU")
def test_hardware_skipif():
    pass


def test_hardware_skip_call():
    skip_for_hardware("needs an Ascend NPU")


@requires_cuda
def test_requires_cuda():
    import torch

    assert torch.cuda.is_available()


def test_missing_fixture():
    pytest.skip("fixtures/hf_configs is missing")


@pytest.mark.skipif(True, reason="optional package absent")
def test_skipif_other():
    pass


def test_importorskip():
    pytest.importorskip("no_such_module_anywhere")


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
'''

_MODULE_SKIP = '''
import pytest

pytest.importorskip("no_such_module_either")


def test_never_collected():
    pass
'''


def _run(pytester, files: dict[str, str]) -> subprocess.CompletedProcess:
    """``pytest -p tests.skip_policy -v`` on ``files``: a separate pytest session (its own configuration and
    plugin manager, the skip policy loaded as ``-p`` loads it) run in this process by pytest's own pytester;
    its exit status and output."""
    for name, text in files.items():
        (pytester.path / name).write_text(textwrap.dedent(text))
    result = pytester.runpytest_inprocess("-p", "tests.skip_policy", "-v", "-p", "no:cacheprovider",
                                          "--rootdir", str(pytester.path), str(pytester.path))
    return subprocess.CompletedProcess(["pytest"], int(result.ret), "\n".join(result.outlines),
                                       "\n".join(result.errlines))


def _outcomes(stdout: str) -> dict[str, str]:
    """{test name: outcome} from pytest -v's ``file::test OUTCOME`` lines (a refused skip in setup is
    ERROR)."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if (
            len(parts) >= 2
            and "::" in parts[0]
            and parts[1] in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "ERROR")
        ):
            out[parts[0].split("::")[-1]] = "FAILED" if parts[1] == "ERROR" else parts[1]
    return out


def test_only_hardware_skips_pass(pytester):
    proc = _run(pytester, {"test_cases.py": _CASES})
    got = _outcomes(proc.stdout)
    cuda = "PASSED" if requires_cuda.args == (False,) else "SKIPPED"
    assert got == {
        "test_passes": "PASSED", "test_hardware_skipif": "SKIPPED", "test_hardware_skip_call": "SKIPPED",
        "test_requires_cuda": cuda, "test_missing_fixture": "FAILED", "test_skipif_other": "FAILED",
        "test_importorskip": "FAILED", "test_expected_failure": "XFAIL",
    }, proc.stdout[-4000:]
    assert proc.returncode == 1
    assert "skip not allowed: 'Skipped: fixtures/hf_configs is missing'" in proc.stdout


def test_a_module_skipped_at_import_fails(pytester):
    proc = _run(pytester, {"test_module_skip.py": _MODULE_SKIP})
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "skip not allowed" in proc.stdout and "no_such_module_either" in proc.stdout
