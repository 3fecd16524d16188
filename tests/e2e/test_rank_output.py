"""What pretrain_gpt.py prints under torchrun with 2 processes: rank-independent lines once, each error once,
as one whole line, with the rank only when the ranks disagree. The flag error runs under torchrun's own
command (its agent's report follows ours); the others run the two workers torchrun would start, forked from a
preloaded interpreter (tests.helpers.launch.StartedTorchrun: the ranks share one stdout and one stderr, as
under torchrun)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.pretrain_helpers import PRETRAIN, make_indexed_dataset, train_flags
from tests.helpers.launch import StartedTorchrun, torchrun_command
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

# A random-weight model of 2 layers: no HF checkpoint needed (NullTokenizer over the tiny vocabulary).
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--group-query-attention",
         "--num-query-groups", "2", "--swiglu", "--disable-bias-linear", "--attention-dropout", "0.0",
         "--hidden-dropout", "0.0", "--make-vocab-size-divisible-by", "1"]


def _torchrun(*flags: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """pretrain_gpt.py under torchrun; the finished process, whatever its status."""
    cmd = torchrun_command(PRETRAIN, *flags, nproc=nproc)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def _workers(*flags: str) -> subprocess.CompletedProcess:
    """pretrain_gpt.py as torchrun's 2 workers (forked, no agent); the finished launch, whatever its
    status."""
    return StartedTorchrun(PRETRAIN, *flags, nproc=2, timeout=240).result(check=False)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error: " in line and "torch.distributed" not in line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 2-iteration TP2 run that saves, with the flags to run it again."""
    root = tmp_path_factory.mktemp("rank_output")
    data = make_indexed_dataset(root / "data" / "corpus_text_document")
    flags = [*MODEL, *train_flags(data, iters=2, gbs=2), "--tensor-model-parallel-size", "2"]
    proc = _workers(
        *flags, "--use-flash-attn", "--no-gradient-accumulation-fusion", "--save", str(root / "ckpt")
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "flags": flags, "data": data, "ckpt": root / "ckpt", "proc": proc}


def test_flag_error_is_one_line_from_rank_0(tmp_path):
    proc = _torchrun(*MODEL, *train_flags(str(tmp_path / "missing_text_document")))
    assert proc.returncode != 0
    assert _error_lines(proc.stderr) == [
        f"error: --data-path {tmp_path}/missing_text_document: {tmp_path}/missing_text_document.bin / "
        f"{tmp_path}/missing_text_document.idx not found; {tmp_path} holds no .bin/.idx pair; "
        "run preprocess_data.py first"]
    assert "pretrain_gpt.py\", line" not in proc.stderr  # torchrun's own traceback follows; ours does not


def test_rank_independent_lines_print_once(trained):
    out = trained["proc"].stdout
    for start in ("> feature patches:", "> host memory:", "NOTE: no-op on cpu", "> initialized world of 2",
                  "  successfully saved checkpoint from iteration"):
        assert sum(line.startswith(start) for line in out.splitlines()) == 1, (start, out[-3000:])
    assert "--no-gradient-accumulation-fusion" in out


def test_error_every_rank_finds_prints_once_without_rank(trained):
    flags = [f if f != "64" else "128" for f in trained["flags"]]  # --hidden-size 128 against a 64 checkpoint
    proc = _workers(*flags, "--load", str(trained["ckpt"]))
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--hidden-size" in lines[0], proc.stderr[
        -3000:
    ]


def test_error_of_one_rank_prints_once_with_its_rank(trained):
    ckpt: Path = trained["ckpt"]
    rank1 = next(ckpt.glob("iter_*/mp_rank_01/model_optim_rng.pt"))
    rank1.unlink()
    proc = _workers(*trained["flags"], "--load", str(ckpt))
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"[rank 1] error: {rank1} not found"), proc.stderr[-3000:]
