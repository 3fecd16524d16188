"""pytest's hooks and fixtures for the whole suite: the skip policy, the files' order under pytest-xdist,
one torch thread per worker, ``hf_config_dir``.

The shared helpers live in :mod:`tests.helpers` (launches, tolerances, tiny models). The launch names are
also importable from here, as tests written before that module import them (``from tests.conftest import
torchrun``); new code imports them from ``tests.helpers.launch`` / ``tests.helpers.paths``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Imported by tests written before tests.helpers (see the docstring).
from tests.helpers.launch import Started, StartedTorchrun, free_port, torchrun  # noqa: F401
from tests.helpers.paths import HF_CONFIG_FIXTURES, REPO_ROOT  # noqa: F401
from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

# `make test` runs two pytest-xdist workers, each taking whole files in this order (--no-loadscope-reorder):
# the files that take longest start first, then the other files with slow (multi-process) tests, then the
# in-process ones, so the run ends on short files rather than on one worker still in a long one
# (docs/performance_journal.md, the test suite). A serial run's total time does not depend on the order.
LONGEST_FIRST = (  # by a worker's wall time in a two-worker run (docs/performance_journal.md)
    "tests/quickstart/test_quickstart.py",
    "tests/e2e/test_pretrain_gpt.py",
    "tests/e2e/test_loss_parity.py",
    "tests/e2e/test_pretrain_resilience.py",
    "tests/e2e/test_moe_loss_parity.py",
    "tests/evaluation/test_evaluation_e2e.py",
    "tests/e2e/test_context_parallel.py",
    "tests/data/test_instruction.py",
    "tests/from_hf/test_one_command.py",
    "tests/e2e/test_context_parallel_packed.py",
    "tests/e2e/test_long_context_rope.py",
    "tests/models/test_lora.py",
    "tests/data/test_preprocess.py",
)


def pytest_configure(config) -> None:
    """Under pytest-xdist, one torch thread per worker: two workers share the two cores, and two threads each
    would oversubscribe them (the launched processes get OMP_NUM_THREADS=1 from the tests already)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    """Whole files, longest first (LONGEST_FIRST), then files with slow tests, then the rest."""
    files: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        rank = LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST) + 1
        if item.get_closest_marker("slow") and path not in LONGEST_FIRST:
            rank = len(LONGEST_FIRST)
        files[path] = min(files.get(path, rank), rank)
    items.sort(key=lambda item: files[item.nodeid.split("::")[0]])  # stable: a file's tests stay together


@pytest.fixture(scope="session")
def qwen25_tokenizer(tmp_path_factory) -> str:
    """Qwen2.5's tokenizer rebuilt offline (151,665 entries, NFC, added tokens); about 4 s to build; shared by
    the data tests and the tests that import their fixtures (tests/dpo)."""
    from mindspeed_llm.quickstart.qwen_tokenizer import write_qwen25_tokenizer

    return str(write_qwen25_tokenizer(tmp_path_factory.mktemp("qwen25")))


@pytest.fixture
def hf_config_dir() -> Path:
    """The hub config.json files in tests/fixtures/hf_configs."""
    return HF_CONFIG_FIXTURES

