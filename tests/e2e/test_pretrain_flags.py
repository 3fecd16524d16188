"""Megatron-LM flags end to end: --mock-data, --train-samples, --log-params-norm, --log-num-zeros-in-grad,
--manual-gc, --empty-unused-memory-level and --exit-duration-in-mins in one TP2 run (data broadcast to TP rank
1)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.e2e.pretrain_helpers import convert_hf_to_mg, make_hf_model, model_flags, run_pretrain

pytestmark = pytest.mark.slow


def test_mock_data_sample_based_training_and_logging_flags(tmp_path):
    from tests.checkpoint.tiny_models import load_hf_model

    hf = make_hf_model(tmp_path / "hf", num_layers=2)
    hf_model = load_hf_model(str(hf))
    mg = convert_hf_to_mg(hf, tmp_path / "mg", tp=2)
    save = tmp_path / "save"
    flags = [
        *model_flags(hf),
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        "127",
        "--mock-data",
        "--seq-length",
        "32",
        "--micro-batch-size",
        "1",
        "--global-batch-size",
        "4",
        "--train-samples",
        "24",
        "--lr",
        "0",
        "--lr-warmup-samples",
        "4",
        "--log-interval",
        "1",
        "--eval-iters",
        "0",
        "--num-workers",
        "0",
        "--log-params-norm",
        "--log-num-zeros-in-grad",
        "--manual-gc",
        "--manual-gc-interval",
        "1",
        "--empty-unused-memory-level",
        "2",
        "--exit-duration-in-mins",
        "0.0001",
        "--tensor-model-parallel-size",
        "2",
        "--load",
        str(mg),
        "--finetune",
        "--save",
        str(save),
    ]
    out = run_pretrain(*flags, nproc=2)
    line = re.search(r"iteration\s+1/\s+6 \|.*", out)  # 24 samples / 4 per batch = 6 iterations
    assert line, out[-3000:]
    # --lr 0 leaves the weights as converted: their norm is the HF model's (TP-duplicated norms counted once).
    want = float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in hf_model.parameters())))
    params_norm = float(re.search(r"params norm: ([0-9.]+) \|", line.group(0)).group(1))
    assert params_norm == pytest.approx(want, abs=1.5e-3)
    assert re.search(r"num zeros: \d+ \|", line.group(0))
    assert "exiting program after 0.0001 minutes (--exit-duration-in-mins)" in out
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert "iteration        2/" not in out
