"""pretrain_gpt.py refuses what a --load checkpoint records but the model cannot run exactly: one ``error:``
line naming the setting, exit code 1, nothing written (--save is not created)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.checkpoint.record_edits import edit_recorded_model
from tests.conftest import REPO_ROOT, Started
from tests.e2e.pretrain_helpers import (
    PRETRAIN,
    convert_hf_to_mg,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    train_flags,
)

pytestmark = pytest.mark.slow


def _errors(proc: subprocess.CompletedProcess) -> tuple[int, list[str]]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def _flags(hf, data, save, *, seq: int = 32) -> list[str]:
    return [*model_flags(hf), *train_flags(data, iters=1, seq=seq), "--save", str(save)]


def _yarn_checkpoint(root, data):
    """A Qwen3 checkpoint whose recorded HF config has a dynamic-NTK rope_scaling (refused: not exact)."""
    hf = make_hf_model(root / "hf", kind="qwen3")
    mg = convert_hf_to_mg(hf, root / "mg")
    rank_file = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(rank_file, weights_only=False)
    edit_recorded_model(state, hf_config={**state["args"].hf_config,
                                          "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})
    torch.save(state, rank_file)
    return [*_flags(hf, data, root / "save"), "--load", str(mg), "--finetune"]


def _sliding_window_checkpoint(root, data):
    """A Mistral checkpoint with an active 16-token window, launched at --seq-length 32."""
    hf = make_hf_model(root / "hf", kind="mistral", sliding_window=16)
    mg = convert_hf_to_mg(hf, root / "mg")
    return [*_flags(hf, data, root / "save", seq=32), "--load", str(mg), "--finetune"]


def _llama3_checkpoint(root, data):
    """A Llama-3.1-scaled checkpoint launched with another --rope-scaling-factor."""
    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = make_hf_model(root / "hf", kind="llama", rope_scaling=scaling)
    mg = convert_hf_to_mg(hf, root / "mg")
    return [
        *_flags(hf, data, root / "save"),
        "--load",
        str(mg),
        "--finetune",
        "--rope-scaling-type",
        "llama3",
        "--rope-scaling-factor",
        "8",
    ]


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict:
    """The three launches, started together (independent single processes: they share the two cores)."""
    data = make_indexed_dataset(tmp_path_factory.mktemp("refused_data") / "corpus_text_document")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    runs = {}
    for name, make in (("yarn", _yarn_checkpoint), ("window", _sliding_window_checkpoint),
                       ("llama3", _llama3_checkpoint)):
        root = tmp_path_factory.mktemp(name)
        runs[name] = (root, Started([sys.executable, str(PRETRAIN), *make(root, data)], env=env, timeout=180))
    return {name: (root, started.result()) for name, (root, started) in runs.items()}


def test_recorded_yarn_rope_scaling(refused):
    root, proc = refused["yarn"]
    code, err = _errors(proc)
    assert code == 1 and len(err) == 1, err
    assert "its recorded HF config is refused: rope_scaling rope_type='dynamic' is not supported" in err[0]
    assert not (root / "save").exists()


def test_sequence_longer_than_an_active_sliding_window(refused):
    root, proc = refused["window"]
    code, err = _errors(proc)
    assert code == 1 and len(err) == 1, err
    assert "sliding_window=16 is active for MistralForCausalLM and --seq-length 32 is longer" in err[0]
    assert not (root / "save").exists()


def test_rope_flags_that_contradict_the_checkpoint(refused):
    root, proc = refused["llama3"]
    code, err = _errors(proc)
    assert code == 1 and len(err) == 1, err
    assert "--rope-scaling-factor 8.0 (checkpoint: 4.0)" in err[0]  # the flags left out are the checkpoint's
    assert not (root / "save").exists()
