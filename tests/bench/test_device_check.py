"""bench/device_check.py: its CPU dry run exercises the same code paths as the GPU check, at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "device_check.py"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="hardware: this machine has CUDA, so the check would run"
)
def test_without_cuda_it_fails_with_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: device_check needs a CUDA GPU") and "--dry-run" in proc.stderr


def test_dry_run_ops_and_logits_pass_on_the_cpu(tmp_path):
    """The op rows (each path vs its torch reference, fp32 and bf16), fused Adam, the ring kernel, logits vs
    transformers."""
    import mindspeed_llm

    dc = _load()
    mindspeed_llm.apply_base_patches()
    dc.init_one_rank("cpu")
    rows = dc.check_ops("cpu", tiny=True) + dc.check_ring_kernel("cpu", tiny=True) + \
        [dc._logits_parity("cpu", tmp_path, tiny=True)]
    names = [r.check for r in rows]
    for op in ("attention", "rope", "rmsnorm", "swiglu", "cross entropy"):
        assert f"op {op} float32" in names and f"op {op} bfloat16" in names
    assert "op fused adam fp32" in names and "logits vs transformers fp32" in names
    # Ring attention's local kernel (the CPU flash kernel here; torch's memory-efficient kernel on CUDA) vs
    # blockwise.
    assert {f"ring kernel cpu_flash {block} {dtype}" for block in ("causal", "chunk x 2 chunks")
            for dtype in ("float32", "bfloat16")} <= set(names)
    failed = [r for r in rows if not r.ok]
    assert not failed, failed


@pytest.mark.slow
def test_full_dry_run_prints_a_table_of_passes(tmp_path):
    """All four checks (ops, logits, train + save + resume, throughput) at tiny sizes on the CPU."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert (
        len(table) == 1 + 11 + 4 + 1 + 1 + 1
    )  # header + op rows + ring kernel rows + logits + resume + throughput
    assert all("| PASS |" in line for line in table[1:])
    assert "| train 6 its + save + resume | PASS | iterations 4-6 equal" in proc.stdout
