"""Bad preference-alignment input is one line: a pairwise dataset with a dataset missing or of other lengths,
an empty answer, --stage dpo on SFT data, DPO flags that do not fit. (A reference of another shape and a
resume without its reference: tests/dpo/test_dpo_lora_resume.py, which needs the trainer.)

The command-line cases run posttrain_gpt.py itself (it refuses them before torch is imported); the data
cases call the check the trainer runs at start-up on every rank.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from mindspeed_llm.runtime.errors import DataError
from tests.conftest import REPO_ROOT
from tests.dpo.helpers import make_pairs, write_pairwise_data
from tests.e2e.pretrain_helpers import write_instruction_data

BASE = [
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--seq-length",
    "32",
    "--max-position-embeddings",
    "64",
    "--micro-batch-size",
    "1",
    "--global-batch-size",
    "4",
    "--train-iters",
    "1",
    "--lr",
    "0",
    "--tokenizer-type",
    "NullTokenizer",
    "--vocab-size",
    "127",
    "--swiglu",
    "--disable-bias-linear",
    "--normalization",
    "RMSNorm",
    "--position-embedding-type",
    "rope",
    "--load",
    "/nonexistent/checkpoint",
]


def posttrain(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "posttrain_gpt.py"), *BASE, *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, lines
    return lines[0]


@pytest.mark.parametrize("missing", ["chosen_labels", "rejected_input_ids"])
def test_a_missing_pairwise_dataset(tmp_path, missing):
    data = write_pairwise_data(tmp_path / "p", make_pairs(), drop=missing)
    line = one_line(posttrain("--stage", "dpo", "--is-pairwise-dataset", "--data-path", data))
    assert f"{data}_packed_{missing}_document.bin/.idx not found" in line and "re-run" in line


def test_dpo_on_sft_data(tmp_path):
    ids = np.arange(3, 12)
    data = write_instruction_data(tmp_path / "sft", [(ids, np.ones_like(ids), ids)])
    line = one_line(posttrain("--stage", "dpo", "--data-path", data))
    assert "is instruction (SFT) data, not pairwise" in line and "AlpacaStylePairwiseHandler" in line


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--stage", "sft", "--dpo-beta", "0.2"), "--dpo-beta applies to preference alignment"),
        (("--stage", "dpo", "--dpo-beta", "0"), "--dpo-beta must be positive"),
        (("--stage", "simpo", "--dpo-loss-type", "ipo"), "--stage simpo with --dpo-loss-type ipo"),
        (("--stage", "orpo", "--ref-model", "."), "the orpo loss has no reference model"),
        (
            ("--stage", "dpo", "--dpo-loss-type", "hinge", "--dpo-label-smoothing", "0.1"),
            "--dpo-label-smoothing applies to the sigmoid and simpo losses",
        ),
        (
            ("--stage", "dpo", "--ref-model", "/nonexistent/ref"),
            "--ref-model /nonexistent/ref: no such folder",
        ),
    ],
)
def test_flags_that_do_not_fit(tmp_path, flags, needle):
    data = write_pairwise_data(tmp_path / "p", make_pairs())
    assert needle in one_line(posttrain(*flags, "--data-path", data))


def test_datasets_of_different_lengths(tmp_path):
    from mindspeed_llm.dpo.data import check_pairwise_data

    data = write_pairwise_data(tmp_path / "p", make_pairs(), short="rejected_labels")
    with pytest.raises(DataError, match="rejected_labels_document does not match .*rejected_input_ids"):
        check_pairwise_data(data)
    data = write_pairwise_data(tmp_path / "q", make_pairs()[:-1])  # three pairs ...
    four = write_pairwise_data(tmp_path / "four", make_pairs())
    for kind in ("input_ids", "labels"):  # ... and the rejected side of four
        for ext in (".bin", ".idx"):
            shutil.copy(
                f"{four}_packed_rejected_{kind}_document{ext}", f"{data}_packed_rejected_{kind}_document{ext}"
            )
    with pytest.raises(DataError, match="holds 4 pairs but .* 3"):
        check_pairwise_data(data)
    assert check_pairwise_data(write_pairwise_data(tmp_path / "ok", make_pairs())) == len(make_pairs())


def test_an_empty_answer_in_the_data(tmp_path):
    from mindspeed_llm.dpo.data import check_pairwise_data

    pairs = make_pairs()
    pairs[2]["rejected_ids"] = []
    data = write_pairwise_data(tmp_path / "p", pairs)
    with pytest.raises(DataError, match="pair 2 has an empty rejected answer"):
        check_pairwise_data(data)
