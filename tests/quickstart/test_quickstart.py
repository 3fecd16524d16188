"""The quick start's six steps, at a smaller size, offline (HF_HUB_OFFLINE=1), as `make quickstart` runs them."""

import json
import os
import re
import subprocess

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from mindspeed_llm.quickstart.summary import losses_from_log
from tests.conftest import REPO_ROOT, free_port


@pytest.mark.slow
def test_quickstart_runs_offline_end_to_end(tmp_path) -> None:
    out = tmp_path / "qs"
    env = {
        **os.environ, "QS_OUT": str(out), "QS_MAX_ROWS": "300", "TRAIN_ITERS": "6", "LOG_INTERVAL": "1",
        "SEQ_LEN": "64", "GBS": "2", "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = subprocess.run(["bash", "examples/quickstart/run_quickstart.sh"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    for step in ("1-2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"step {step}" in proc.stdout

    hf_dir = out / "model_from_hf" / "qwen2.5-tiny-hf"
    assert (out / "model_weights" / "qwen2.5_mcore" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert (out / "dataset" / "alpaca_text_document.idx").is_file()
    ckpt = out / "ckpt" / "qwen2.5_tiny_pretrain"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert sorted(p.name for p in (ckpt / "iter_0000006").iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]

    losses = losses_from_log((out / "logs" / "train_mcore_qwen25_tiny.log").read_text())
    assert [it for it, _ in losses] == [2, 3, 4, 5, 6]  # resumed from the converted iteration 1
    assert losses[-1][1] < losses[0][1]

    # The trained model came back as an HF folder with the original tokenizer, in the training dtype.
    back = hf_dir / "mg2hf"
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is True
    assert (back / "tokenizer.json").is_file()
    shard = next(back.glob("*.safetensors"))
    with safe_open(str(shard), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype.is_floating_point
    # The output explains itself: one final-loss figure and what it averages, the steps as run, and the
    # held-out loss of the untrained and the trained model side by side.
    assert "[summary] 5 training steps ran, iterations 2-6: training continued after the converted checkpoint's " \
        "iteration 1" in proc.stdout
    final = f"[summary] final loss {losses[-1][1]:.3f}: the mean lm loss of iterations 6 (1 steps of 2 sequences)"
    assert final in proc.stdout
    assert "[after training]" in proc.stdout and "lm loss: " not in proc.stdout.split("[after training]")[1].split("\n")[0]
    evaluated = re.search(r"untrained \(the converted starting point\): ([0-9.]+)   trained: ([0-9.]+)", proc.stdout)
    assert evaluated and float(evaluated.group(2)) < float(evaluated.group(1))
    assert "[generate] trained model's continuation (16 tokens, greedy)" in proc.stdout
    assert "[generate] What to expect:" in proc.stdout


@pytest.mark.slow
def test_quickstart_qwen3_variant(tmp_path) -> None:
    """make quickstart MODEL=qwen3: a tiny Qwen3 (q/k norms, head_dim 64 with hidden/heads 32) through all steps."""
    out = tmp_path / "qs"
    env = {
        **os.environ, "QS_OUT": str(out), "QS_MODEL": "qwen3", "QS_MAX_ROWS": "200", "TRAIN_ITERS": "4",
        "LOG_INTERVAL": "1", "SEQ_LEN": "64", "GBS": "2", "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = subprocess.run(["bash", "examples/quickstart/run_quickstart.sh"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "tiny Qwen3 HF folder" in proc.stdout
    source_tokenizer = AutoTokenizer.from_pretrained(out / "model_from_hf" / "qwen3-tiny-hf")
    assert source_tokenizer.convert_tokens_to_ids("<think>") == 151667  # Qwen3's tokenizer, not Qwen2.5's
    losses = losses_from_log((out / "logs" / "train_mcore_qwen3_tiny.log").read_text())
    assert [it for it, _ in losses] == [2, 3, 4]
    back = out / "model_from_hf" / "qwen3-tiny-hf" / "mg2hf"
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["head_dim"] == 64
    with safe_open(str(next(back.glob("*.safetensors"))), "pt") as f:
        assert "model.layers.0.self_attn.q_norm.weight" in set(f.keys())
    assert "[generate] trained model's continuation" in proc.stdout


def test_unknown_quickstart_model_is_refused(tmp_path) -> None:
    env = {**os.environ, "QS_OUT": str(tmp_path / "qs"), "QS_MODEL": "qwen4"}
    proc = subprocess.run(["bash", "examples/quickstart/run_quickstart.sh"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "QS_MODEL (make quickstart MODEL=...) must be qwen25 or qwen3" in proc.stderr
    assert not (tmp_path / "qs").exists()
