"""bench/device_check.py: its CPU dry run exercises the same code paths as the GPU check, at tiny sizes."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.helpers.launch import StartedTorchrun

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
def test_without_cuda_it_fails_with_one_line(monkeypatch, capsys):
    """main() as the script calls it (``sys.exit(main())``), in this process: exit status 2 and one line on
    stderr."""
    monkeypatch.setenv("MINDSPEED_LLM_DEVICE", "cpu")  # main() sets it: restored after the test
    assert _load().main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().count("\n") == 0, out.err
    assert out.err.startswith("error: device_check needs a CUDA GPU") and "--dry-run" in out.err


@pytest.mark.slow
def test_full_dry_run_prints_a_table_of_passes(tmp_path, monkeypatch, capsys):
    """All four checks (ops, logits, train + save + resume, throughput) at tiny sizes on the CPU: the op rows
    (each path vs its torch reference, fp32 and bf16), fused Adam, the ring kernel, logits vs transformers.
    main() runs in this process; its pretrain_gpt.py runs are real processes (see ``launch``)."""
    monkeypatch.setenv("MINDSPEED_LLM_DEVICE", "cpu")  # main() sets it: restored after the test
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the torchrun children, as a launch from the tests has
    dc = _load()
    own_torchrun = dc.torchrun

    def launch(args: list[str], log, timeout: int) -> str:
        """The throughput run through the script's own torchrun command; the two resume runs as the workers
        torchrun would start, forked from a preloaded interpreter (no agent, no fresh imports)."""
        if not log.name.startswith("resume_"):
            return own_torchrun(args, log, timeout)
        started = StartedTorchrun(REPO_ROOT / "pretrain_gpt.py", *args, nproc=1, timeout=timeout)
        proc = started.result(check=False)
        log.write_text(proc.stdout + "\n" + proc.stderr)
        assert proc.returncode == 0, f"pretrain_gpt.py failed ({proc.returncode}) [log: {log}]"
        return proc.stdout

    monkeypatch.setattr(dc, "torchrun", launch)
    rows_json = tmp_path / "rows.json"
    code = dc.main(["--dry-run", "--workdir", str(tmp_path / "work"), "--json", str(rows_json)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert (
        len(table) == 1 + 11 + 4 + 1 + 1 + 1
    )  # header + op rows + ring kernel rows + logits + resume + throughput
    assert all("| PASS |" in line for line in table[1:])
    assert "| train 6 its + save + resume | PASS | iterations 4-6 equal" in stdout
    rows = json.loads(rows_json.read_text())
    names = [r["check"] for r in rows]
    for op in ("attention", "rope", "rmsnorm", "swiglu", "cross entropy"):
        assert f"op {op} float32" in names and f"op {op} bfloat16" in names
    assert "op fused adam fp32" in names and "logits vs transformers fp32" in names
    # Ring attention's local kernel (the CPU flash kernel here; torch's memory-efficient kernel on CUDA) vs
    # blockwise.
    assert {f"ring kernel cpu_flash {block} {dtype}" for block in ("causal", "chunk x 2 chunks")
            for dtype in ("float32", "bfloat16")} <= set(names)
    assert all(r["ok"] for r in rows), rows
