"""MindSpeed-LLM master's Qwen3-8B quick start, as its docs give it, at tiny sizes: no convert and no
preprocess step, only the pretrain and tune scripts with the HF folder and the raw alpaca parquet.

    CKPT_LOAD_DIR=./model_from_hf/qwen3_hf/ TOKENIZER_PATH=./model_from_hf/qwen3_hf/ \\
    DATA_PATH=./dataset/train-00000-of-00001-....parquet bash examples/mcore/qwen3/pretrain_qwen3_8b_4K_ptd.sh
    (the same for tune_qwen3_8b_4K_full_ptd.sh)

The scripts run as written; a recorder stands in for ``torchrun`` (a stand-in for the launcher, not for
anything under test) and the test launches the recorded command with the model's sizes made tiny (the
tiny Qwen3's: layers, widths, heads, vocabulary, sequence, batch and iterations).
"""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from tests.e2e.pretrain_helpers import loss_strings
from tests.helpers.launch import StartedTorchrun, free_port
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = {
    "--num-layers": "2",
    "--hidden-size": "64",
    "--ffn-hidden-size": "96",
    "--num-attention-heads": "4",
    "--num-query-groups": "2",
    "--kv-channels": "32",
    "--padded-vocab-size": "128",
    "--max-position-embeddings": "256",
    "--global-batch-size": "4",
    "--train-iters": "2",
    "--save-interval": "2",
    "--eval-interval": "2",
    "--workers": "1",
}
SCRIPTS = {
    "pretrain": ("examples/mcore/qwen3/pretrain_qwen3_8b_4K_ptd.sh", "32"),
    "tune": ("examples/mcore/qwen3/tune_qwen3_8b_4K_full_ptd.sh", "64"),
}


def recorded_command(script: str, env: dict, tmp_path) -> list[str]:
    """The script's torchrun arguments, run as written with a recorder for torchrun."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "torchrun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (bin_dir / "torchrun").chmod(0o755)
    out = tmp_path / "args.txt"
    env = {
        **os.environ,
        **env,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGS_OUT": str(out),
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": str(REPO_ROOT),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    subprocess.run(
        ["bash", str(REPO_ROOT / script)],
        check=True,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    words = [w for w in out.read_text().split("\n") if w]
    return words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]


def tiny(argv: list[str], seq: str) -> list[str]:
    sizes = {**TINY, "--seq-length": seq}
    return [sizes.get(argv[i - 1], w) if i else w for i, w in enumerate(argv)]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The user's folders: model_from_hf/qwen3_hf (a tiny Qwen3) and the alpaca parquet; both scripts run."""
    import pandas as pd

    from tests.helpers.tiny import make_hf_model, save_word_tokenizer

    root = tmp_path_factory.mktemp("mindspeed_quickstart")
    hf = make_hf_model(root / "model_from_hf" / "qwen3_hf", "qwen3", num_layers=2)
    save_word_tokenizer(hf, 126, ("<|im_start|>", "<|im_end|>"))
    rng = random.Random(0)

    def words(n):
        return " ".join(f"w{rng.randrange(3, 126)}" for _ in range(n))

    rows = []
    for _ in range(32):
        row = {
            "instruction": words(rng.randrange(3, 9)),
            "input": words(rng.randrange(0, 4)),
            "output": words(rng.randrange(3, 12)),
        }
        row["text"] = " ".join(row.values())  # tatsu-lab/alpaca's parquet has the text column too
        rows.append(row)
    data = root / "dataset" / "train-00000-of-00001.parquet"
    data.parent.mkdir()
    pd.DataFrame(rows).to_parquet(data)
    runs = {}
    for name, (script, seq) in SCRIPTS.items():
        env = {
            "CKPT_LOAD_DIR": f"{hf}/",
            "TOKENIZER_PATH": f"{hf}/",
            "DATA_PATH": str(data),
            "CKPT_SAVE_DIR": str(root / "ckpt" / name),
            "NPUS_PER_NODE": "2",
        }
        argv = tiny(recorded_command(script, env, root / name), seq)
        launched = StartedTorchrun(REPO_ROOT / argv[0], *argv[1:], nproc=2, timeout=300).result()
        runs[name] = launched.stdout
    return root, hf, runs


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_mindspeed_quickstart_commands_train_from_the_hf_folder_and_the_parquet(quickstart, name):
    from transformers import AutoModelForCausalLM

    root, hf, runs = quickstart
    out = runs[name]
    assert "megatron_cache_tp1pp2ep1" in out
    steps = loss_strings(out)
    assert sorted(steps) == (
        [2] if name == "pretrain" else [1, 2]
    )  # a conversion continues at 2; --finetune at 1
    assert all(float(v) > 0 for v in steps.values())
    copy = root / "ckpt" / name / "mg2hf_iteration2"
    model = AutoModelForCausalLM.from_pretrained(str(copy))
    assert model.config.num_hidden_layers == 2 and (copy / "tokenizer.json").is_file()
    if name == "tune":  # the pretrain run built the checkpoint cache; the tune run builds its own data only
        assert (
            "HF -> Megatron checkpoint: reusing" in out
            and "preprocessed train-00000-of-00001.parquet: building" in out
        )
    config = json.loads((hf / "config.json").read_text())
    assert json.loads((copy / "config.json").read_text())["architectures"] == config["architectures"]
