"""pretrain_gpt.py refuses what a --load checkpoint records but the model cannot run exactly: one ``error:`` line
naming the setting, exit code 1, nothing written (--save is not created)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.e2e.pretrain_helpers import (
    PRETRAIN,
    convert_hf_to_mg,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    train_flags,
)

pytestmark = pytest.mark.slow


def _pretrain_error(*flags: str) -> tuple[int, list[str]]:
    proc = subprocess.run([sys.executable, str(PRETRAIN), *flags], capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_indexed_dataset(tmp_path_factory.mktemp("refused_data") / "corpus_text_document")


def _flags(hf, data, save, *, seq: int = 32) -> list[str]:
    return [*model_flags(hf), *train_flags(data, iters=1, seq=seq), "--save", str(save)]


def test_recorded_yarn_rope_scaling(tmp_path, data):
    hf = make_hf_model(tmp_path / "hf", kind="qwen3")
    mg = convert_hf_to_mg(hf, tmp_path / "mg")
    rank_file = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(rank_file, weights_only=False)
    state["args"].hf_config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    torch.save(state, rank_file)
    code, err = _pretrain_error(*_flags(hf, data, tmp_path / "save"), "--load", str(mg), "--finetune")
    assert code == 1 and len(err) == 1, err
    assert "its recorded HF config is refused: rope_scaling rope_type='yarn' is not supported" in err[0]
    assert not (tmp_path / "save").exists()


def test_sequence_longer_than_an_active_sliding_window(tmp_path, data):
    hf = make_hf_model(tmp_path / "hf", kind="mistral", sliding_window=16)
    mg = convert_hf_to_mg(hf, tmp_path / "mg")
    code, err = _pretrain_error(*_flags(hf, data, tmp_path / "save", seq=32), "--load", str(mg), "--finetune")
    assert code == 1 and len(err) == 1, err
    assert "sliding_window=16 is active for MistralForCausalLM and --seq-length 32 is longer" in err[0]
    assert not (tmp_path / "save").exists()


def test_rope_flags_that_contradict_the_checkpoint(tmp_path, data):
    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = make_hf_model(tmp_path / "hf", kind="llama", rope_scaling=scaling)
    mg = convert_hf_to_mg(hf, tmp_path / "mg")
    code, err = _pretrain_error(*_flags(hf, data, tmp_path / "save"), "--load", str(mg), "--finetune",
                                "--rope-scaling-type", "llama3", "--rope-scaling-factor", "8")
    assert code == 1 and len(err) == 1, err
    assert "--rope-scaling-factor 8.0 (checkpoint: 4.0)" in err[0]  # the flags left out are the checkpoint's
    assert not (tmp_path / "save").exists()
