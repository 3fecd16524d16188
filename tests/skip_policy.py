"""The suite may skip a test only for hardware this machine lacks (CUDA, NPU); any other skip fails.

A skip's reason must start with ``hardware:`` (use :data:`requires_cuda`, :data:`requires_npu` or
:func:`skip_for_hardware`). Anything else, a missing fixture, an optional package, an ``importorskip``,
is reported as a failure, so that a suite that silently stops testing something cannot pass.
Loaded by tests/conftest.py; ``pytest -p tests.skip_policy`` loads it elsewhere (its own test does).
"""

from __future__ import annotations

import importlib.util

import pytest

HARDWARE = "hardware:"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Evaluated at import, before mindspeed_llm's CPU device layer gives torch.cuda its CPU answers.
requires_cuda = pytest.mark.skipif(not _cuda_available(), reason=f"{HARDWARE} needs a CUDA GPU")
requires_npu = pytest.mark.skipif(importlib.util.find_spec("torch_npu") is None,
                                  reason=f"{HARDWARE} needs an Ascend NPU (torch_npu)")


def skip_for_hardware(why: str) -> None:
    """Skip the running test because of the hardware (or its driver stack) present or absent here."""
    pytest.skip(f"{HARDWARE} {why}")


def _refused(reason: str) -> bool:
    # longrepr reasons read "Skipped: <reason>"; importorskip's read "could not import ...".
    text = reason.removeprefix("Skipped: ").strip()
    return not text.startswith(HARDWARE)


def _as_failure(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skip not allowed: {reason!r}. Only hardware a machine lacks may skip a test "
        f"(reason starting with {HARDWARE!r}, see tests/skip_policy.py); fix the cause instead."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's skip (setup or call) with a reason other than hardware becomes a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if _refused(reason):
            _as_failure(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.importorskip`` at the top,
    ``pytest.skip(allow_module_level)``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if _refused(reason):
            _as_failure(report, reason)
