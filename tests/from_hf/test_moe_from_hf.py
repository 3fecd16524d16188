"""Training a mixture-of-experts model straight from its HF folder and raw data, at EP2, with an HF copy of
the save: the copy equals convert_ckpt.py mg->hf of the same save tensor for tensor (every expert gathered
from both EP ranks' files) and loads in transformers as the trained Qwen3-MoE.

One launch: ``pretrain_gpt.py --load HF --data-path raw.jsonl --handler-name GeneralPretrainHandler
--enable-mg2hf-convert --expert-model-parallel-size 2`` on a tiny Qwen3-MoE (4 experts, top-2) with a word
tokenizer. (The one-command losses equal the separate steps' for dense models in test_one_command.py; the
cache and the converter are the same code here, at EP2.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.e2e.test_moe_loss_parity import moe_model_flags
from tests.from_hf.test_one_command import _common, _tensors, _words
from tests.helpers.launch import StartedTorchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import save_word_tokenizer
from tests.helpers.tiny_moe import make_moe_hf_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("moe_from_hf")
    hf = make_moe_hf_model(root / "hf", "qwen3_moe", num_layers=2, norm_topk_prob=True)
    save_word_tokenizer(hf, 128, ())
    rng = random.Random(0)
    raw = root / "corpus.jsonl"
    rows = (json.dumps({"text": _words(rng, rng.randrange(10, 40))}) for _ in range(48))
    raw.write_text("".join(row + "\n" for row in rows))
    out = StartedTorchrun(
        REPO_ROOT / "pretrain_gpt.py", *moe_model_flags(hf), "--make-vocab-size-divisible-by", "1",
        "--no-load-optim", "--no-load-rng", "--expert-model-parallel-size", "2",
        "--moe-token-dispatcher-type", "alltoall", *_common(32, root / "save"), "--load", hf,
        "--data-path", raw, "--handler-name", "GeneralPretrainHandler", "--append-eod",
        "--enable-mg2hf-convert", "--tokenizer-type", "PretrainedFromHF", nproc=2, timeout=400,
    ).result().stdout
    return {"root": root, "hf": hf, "out": out}


def test_the_hf_copy_of_an_ep2_save_equals_convert_ckpt_and_loads(run, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from mindspeed_llm.convert.cli import main as convert_main

    save, hf = run["root"] / "save", run["hf"]
    assert "HF -> Megatron checkpoint: built" in run["out"] and "HF copy of iteration 3: built" in run["out"]
    assert sorted(p.name for p in (save / "iter_0000003").iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    assert convert_main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(save),
                         "--load-iteration", "3", "--save-dir", str(tmp_path / "hf"), "--hf-dir", str(hf),
                         "--no-progress"]) == 0
    ours, theirs = _tensors(save / "mg2hf_iteration3"), _tensors(tmp_path / "hf")
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.equal(ours[key], tensor) for key, tensor in theirs.items())
    start = _tensors(hf)
    assert ours.keys() == start.keys()  # every expert of every layer, under the hub's names
    # Both EP ranks' experts were trained and gathered: experts 0-1 live in EP rank 0's file, 2-3 in rank 1's.
    for expert in range(4):
        key = next(k for k in ours if f"experts.{expert}." in k or k.endswith("experts.gate_up_proj"))
        if key.endswith("gate_up_proj"):
            assert not torch.equal(ours[key][expert], start[key][expert])
        else:
            assert not torch.equal(ours[key], start[key]), key
    model = AutoModelForCausalLM.from_pretrained(str(save / "mg2hf_iteration3"), dtype=torch.float32)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert torch.isfinite(model(torch.tensor([[5, 9, 23, 42]])).logits).all()
