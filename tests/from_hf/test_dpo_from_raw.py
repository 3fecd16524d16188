"""DPO from raw preference pairs in one command equals the separate steps.

``posttrain_gpt.py --stage dpo --load HF --data-path pairs.jsonl --handler-name AlpacaStylePairwiseHandler``
(MindSpeed-LLM's pairwise handler) preprocesses the pairs once at start-up through ``data/pairwise.py`` and
converts the HF folder, then trains: its losses, rewards and saved weights equal those of
``convert_ckpt.py`` + ``preprocess_data.py`` (run here through the tools' own ``main``) +
``posttrain_gpt.py --stage dpo`` on their outputs. The two launches run side by side (one process each).
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from tests.e2e.pretrain_helpers import model_flags
from tests.helpers.launch import StartedTorchrun
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

SPECIALS = ("<|im_start|>", "<|im_end|>")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(3, 126)}" for _ in range(n))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mindspeed_llm.convert.cli import main as convert_main
    from mindspeed_llm.data.cli import main as preprocess_main
    from tests.helpers.tiny import make_hf_model, save_word_tokenizer

    root = tmp_path_factory.mktemp("dpo_from_raw")
    hf = make_hf_model(root / "hf", "qwen3", num_layers=2)
    save_word_tokenizer(hf, 128 - len(SPECIALS), SPECIALS)
    rng = random.Random(0)
    raw = root / "data" / "pairs.jsonl"
    raw.parent.mkdir()
    rows = [
        {
            "instruction": _words(rng, rng.randrange(3, 8)),
            "input": _words(rng, rng.randrange(0, 3)),
            "chosen": _words(rng, rng.randrange(2, 9)),
            "rejected": _words(rng, rng.randrange(2, 9)),
        }
        for _ in range(16)
    ]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = root / "ref"
    convert = ["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(hf)]
    convert += ["--save-dir", str(ref / "mg"), "--model-type-hf", "qwen3", "--no-progress"]
    assert convert_main(convert) == 0
    preprocess = ["--input", str(raw), "--output-prefix", str(ref / "pairs"), "--tokenizer-name-or-path"]
    preprocess += [str(hf), "--handler-name", "AlpacaStylePairwiseHandler", "--prompt-type", "qwen3"]
    assert preprocess_main(preprocess) == 0

    common = [
        *map(str, model_flags(hf)),
        *("--make-vocab-size-divisible-by 1 --stage dpo --prompt-type qwen3 --seq-length 32").split(),
        *("--micro-batch-size 2 --global-batch-size 4 --train-iters 2 --lr 1e-3 --min-lr 1e-4").split(),
        *("--lr-warmup-iters 1 --weight-decay 0.0 --clip-grad 1.0 --seed 1234 --log-interval 1").split(),
        *("--eval-iters 0 --num-workers 0 --split 100,0,0 --no-load-optim --no-load-rng --finetune").split(),
    ]
    one = [*common, "--load", str(hf), "--data-path", str(raw), "--save", str(root / "s_one")]
    one += ["--handler-name", "AlpacaStylePairwiseHandler"]
    separate = [*common, "--load", str(ref / "mg"), "--data-path", str(ref / "pairs")]
    separate += ["--tokenizer-name-or-path", str(hf), "--save", str(root / "s_ref")]
    script = REPO_ROOT / "posttrain_gpt.py"
    started = {
        name: StartedTorchrun(script, *flags, nproc=1, timeout=300)
        for name, flags in (("one", one), ("separate", separate))
    }
    return root, raw, {name: launched.result().stdout for name, launched in started.items()}


def _metrics(out: str) -> dict[int, str]:
    """{iteration: its logged loss, rewards and log-probabilities as printed} (for exact comparisons)."""
    found = re.findall(r"iteration\s+(\d+)/\s*\d+ \|.*?\| (loss: .*?)\| loss scale", out)
    return {int(it): text for it, text in found}


def test_dpo_from_raw_pairs_equals_preprocess_then_train(runs):
    from mindspeed_llm.runtime.checkpoint.layout import safe_torch_load

    root, raw, out = runs
    one, separate = out["one"], out["separate"]
    assert "preprocessed pairs.jsonl: building" in one and "HF -> Megatron checkpoint: building" in one
    got, want = _metrics(one), _metrics(separate)
    assert got == want and sorted(got) == [1, 2] and "rewards/chosen: " in got[2]
    # The cache holds preprocess_data.py's four pairwise datasets, byte for byte.
    (cache,) = raw.parent.glob("pairs.mindspeed_cache-*[!k]")
    for side in ("chosen", "rejected"):
        for kind in ("input_ids", "labels"):
            for ext in (".bin", ".idx"):
                name = f"pairs_packed_{side}_{kind}_document{ext}"
                assert (cache / name).read_bytes() == (root / "ref" / name).read_bytes(), name
    a = safe_torch_load(str(root / "s_one" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"))["model"]
    b = safe_torch_load(str(root / "s_ref" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"))["model"]
    assert a.keys() == b.keys()
    for key, tensor in b.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(a[key], tensor), key
