"""One command equals the separate steps, bit for bit, and its HF copies equal convert_ckpt.py's.

``pretrain_gpt.py --load HF --data-path raw.jsonl --handler-name ...`` logs exactly the losses of
``convert_ckpt.py`` + ``preprocess_data.py`` + ``pretrain_gpt.py`` (run here through the tools' own ``main``)
at TP2 and at PP2, and saves the same weights; the same for ``posttrain_gpt.py --stage sft`` (LoRA) on a raw
alpaca parquet. Each HF copy of a save equals convert_ckpt.py mg->hf of that save tensor for tensor and loads
in transformers (the LoRA run's as a peft adapter folder, with --save-lora-to-hf, or merged). A relaunch
reuses both caches, says so and shows the time to its first step. The model (tiny Qwen3, word tokenizer
with the chat template's specials) and the data are made here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.e2e.pretrain_helpers import loss_strings, model_flags
from tests.helpers.launch import StartedTorchrun
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

PRETRAIN, POSTTRAIN = REPO_ROOT / "pretrain_gpt.py", REPO_ROOT / "posttrain_gpt.py"
LORA = [
    "--lora-target-modules",
    "linear_qkv",
    "linear_proj",
    "linear_fc1",
    "linear_fc2",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
]
SPECIALS = ("<|im_start|>", "<|im_end|>")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(3, 126)}" for _ in range(n))


def _common(seq: int, save: Path) -> list[str]:
    return [
        str(f)
        for f in (
            "--tokenizer-type",
            "PretrainedFromHF",
            "--seq-length",
            seq,
            "--micro-batch-size",
            1,
            "--global-batch-size",
            4,
            "--train-iters",
            3,
            "--lr",
            3e-3,
            "--min-lr",
            3e-4,
            "--lr-warmup-iters",
            1,
            "--weight-decay",
            0.1,
            "--clip-grad",
            1.0,
            "--seed",
            1234,
            "--log-interval",
            1,
            "--eval-iters",
            0,
            "--num-workers",
            0,
            "--split",
            "100,0,0",
            "--save",
            save,
        )
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The model, the raw data, the separate steps' checkpoints and datasets, and every launch's output."""
    from mindspeed_llm.convert.cli import main as convert_main
    from mindspeed_llm.data.cli import main as preprocess_main
    from tests.helpers.tiny import make_hf_model, save_word_tokenizer

    root = tmp_path_factory.mktemp("one_command")
    hf = make_hf_model(root / "hf", "qwen3", num_layers=2)
    save_word_tokenizer(hf, 128 - len(SPECIALS), SPECIALS)  # the qwen3 template's specials, 128 rows in all
    rng = random.Random(0)
    raw = root / "data" / "corpus.jsonl"
    raw.parent.mkdir()
    raw.write_text(
        "".join(json.dumps({"text": _words(rng, rng.randrange(10, 40))}) + "\n" for _ in range(48))
    )
    import pandas as pd

    alpaca = root / "data" / "alpaca.parquet"
    pd.DataFrame(
        [
            {
                "instruction": _words(rng, rng.randrange(3, 10)),
                "input": _words(rng, rng.randrange(0, 5)),
                "output": _words(rng, rng.randrange(3, 15)),
            }
            for _ in range(24)
        ]
    ).to_parquet(alpaca)

    # The separate steps: convert_ckpt.py and preprocess_data.py as a user runs them.
    ref = root / "ref"
    for tp, pp in ((2, 1), (1, 2)):
        assert (
            convert_main(
                [
                    "--load-model-type",
                    "hf",
                    "--save-model-type",
                    "mg",
                    "--load-dir",
                    str(hf),
                    "--save-dir",
                    str(ref / f"mg_tp{tp}pp{pp}"),
                    "--target-tensor-parallel-size",
                    str(tp),
                    "--target-pipeline-parallel-size",
                    str(pp),
                    "--model-type-hf",
                    "qwen3",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (
        preprocess_main(
            [
                "--input",
                str(raw),
                "--output-prefix",
                str(ref / "corpus"),
                "--tokenizer-name-or-path",
                str(hf),
                "--append-eod",
            ]
        )
        == 0
    )
    assert (
        preprocess_main(
            [
                "--input",
                str(alpaca),
                "--output-prefix",
                str(ref / "alpaca"),
                "--tokenizer-name-or-path",
                str(hf),
                "--handler-name",
                "AlpacaStyleInstructionHandler",
                "--prompt-type",
                "qwen3",
            ]
        )
        == 0
    )

    model = model_flags(hf) + ["--make-vocab-size-divisible-by", "1"]
    pre = [*model, "--no-load-optim", "--no-load-rng"]
    sft = [*model, "--stage", "sft", "--finetune", "--prompt-type", "qwen3", "--no-pad-to-seq-lengths", *LORA]
    one_pre = [
        "--load",
        str(hf),
        "--data-path",
        str(raw),
        "--handler-name",
        "GeneralPretrainHandler",
        "--append-eod",
    ]
    one_sft = [
        "--load",
        str(hf),
        "--enable-hf2mg-convert",
        "--enable-mg2hf-convert",
        "--data-path",
        str(alpaca),
        "--handler-name",
        "AlpacaStyleInstructionHandler",
        "--enable-thinking",
        "true",
    ]

    def ref_pre(lay):
        return [
            "--load",
            str(ref / f"mg_{lay}"),
            "--data-path",
            str(ref / "corpus_text_document"),
            "--tokenizer-name-or-path",
            str(hf),
        ]

    def ref_sft(lay):
        return [
            "--load",
            str(ref / f"mg_{lay}"),
            "--data-path",
            str(ref / "alpaca"),
            "--tokenizer-name-or-path",
            str(hf),
        ]

    layouts = {
        "tp2pp1": ["--tensor-model-parallel-size", "2"],
        "tp1pp2": ["--pipeline-model-parallel-size", "2"],
    }
    out = {}

    def launch(name, script, *flags):
        return name, StartedTorchrun(script, *flags, nproc=2, timeout=300)

    # Every launch at once (the one-command launches that share a cache build it once between them), then,
    # once those that build the TP2 caches are done, the relaunch that reuses both.
    pre_tp2 = [*pre, *layouts["tp2pp1"]]
    started = dict(
        [
            launch("pre_tp2pp1", PRETRAIN, *pre_tp2, *_common(32, root / "s_pre_tp2pp1"), *one_pre),
            launch(
                "ref_pre_tp2pp1", PRETRAIN, *pre_tp2, *_common(32, root / "r_pre_tp2pp1"), *ref_pre("tp2pp1")
            ),
            launch(
                "pre_tp1pp2",
                PRETRAIN,
                *pre,
                *layouts["tp1pp2"],
                *_common(32, root / "s_pre_tp1pp2"),
                *one_pre,
            ),
            launch(
                "ref_pre_tp1pp2",
                PRETRAIN,
                *pre,
                *layouts["tp1pp2"],
                *_common(32, root / "r_pre_tp1pp2"),
                *ref_pre("tp1pp2"),
            ),
            launch(
                "sft_tp2pp1",
                POSTTRAIN,
                *sft,
                *layouts["tp2pp1"],
                *_common(64, root / "s_sft_tp2pp1"),
                *one_sft,
                "--save-lora-to-hf",
            ),
            launch(
                "ref_sft_tp2pp1",
                POSTTRAIN,
                *sft,
                *layouts["tp2pp1"],
                *_common(64, root / "r_sft_tp2pp1"),
                *ref_sft("tp2pp1"),
            ),
            launch(
                "sft_tp1pp2",
                POSTTRAIN,
                *sft,
                *layouts["tp1pp2"],
                *_common(64, root / "s_sft_tp1pp2"),
                *one_sft,
            ),
            launch(
                "ref_sft_tp1pp2",
                POSTTRAIN,
                *sft,
                *layouts["tp1pp2"],
                *_common(64, root / "r_sft_tp1pp2"),
                *ref_sft("tp1pp2"),
            ),
        ]
    )
    for name in ("pre_tp2pp1", "pre_tp1pp2", "sft_tp2pp1"):
        out[name] = started.pop(name).result().stdout
    started.update([launch("again_tp2pp1", PRETRAIN, *pre_tp2, *_common(32, root / "s_again"), *one_pre)])
    for name, launched in started.items():
        out[name] = launched.result().stdout
    return {"root": root, "hf": hf, "out": out}


@pytest.mark.parametrize("stage", ["pre", "sft"])
@pytest.mark.parametrize("layout", ["tp2pp1", "tp1pp2"])
def test_one_command_logs_the_separate_steps_losses_and_saves_their_weights(runs, stage, layout):
    from mindspeed_llm.runtime.checkpoint.layout import safe_torch_load

    got, want = (
        loss_strings(runs["out"][f"{stage}_{layout}"]),
        loss_strings(runs["out"][f"ref_{stage}_{layout}"]),
    )
    assert got and got == want
    first = {"pre": 2, "sft": 1}[stage]  # a converted checkpoint continues at 2; --finetune starts at 1
    assert sorted(got) == list(range(first, 4))
    root = runs["root"]
    ours, theirs = (
        root / f"s_{stage}_{layout}" / "iter_0000003",
        root / f"r_{stage}_{layout}" / "iter_0000003",
    )
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*.pt"))
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*.pt")) and files
    for rel in files:
        a, b = safe_torch_load(str(ours / rel))["model"], safe_torch_load(str(theirs / rel))["model"]
        assert a.keys() == b.keys()
        for key, tensor in b.items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(a[key], tensor), f"{rel}: {key}"


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.mark.parametrize("name", ["pre_tp2pp1", "pre_tp1pp2", "sft_tp2pp1", "sft_tp1pp2"])
def test_each_hf_copy_equals_convert_ckpt_of_the_save_and_loads(runs, name, tmp_path):
    from mindspeed_llm.convert.cli import main as convert_main

    root, hf = runs["root"], runs["hf"]
    save = root / f"s_{name}"
    copy = save / "mg2hf_iteration3"
    assert "HF copy of iteration 3: building" in runs["out"][name]
    argv = [
        "--load-model-type",
        "mg",
        "--save-model-type",
        "hf",
        "--save-dir",
        str(tmp_path / "hf"),
        "--hf-dir",
        str(hf),
        "--no-progress",
    ]
    if name.startswith("sft"):
        layout = name.split("_")[1]
        argv += ["--load-dir", str(hf / f"megatron_cache_{layout}ep1"), "--lora-load", str(save)]
        argv += ["--save-lora-to-hf"] if name == "sft_tp2pp1" else []
    else:
        argv += ["--load-dir", str(save), "--load-iteration", "3"]
    assert convert_main(argv) == 0
    ours, theirs = _tensors(copy), _tensors(tmp_path / "hf")
    assert ours.keys() == theirs.keys() and ours
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "sft_tp2pp1":  # a peft adapter folder on the base model
        from peft import PeftModel

        assert (copy / "adapter_config.json").is_file()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(hf)), str(copy))
        assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(copy))
        AutoTokenizer.from_pretrained(str(copy))
        ref = AutoModelForCausalLM.from_pretrained(str(hf))
        # Trained: the copy is not the model it started from.
        assert not torch.equal(
            model.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight
        )
    logits = model(torch.tensor([[5, 9, 23, 42]])).logits
    assert torch.isfinite(logits).all()


def test_a_relaunch_reuses_both_caches_says_so_and_shows_the_time_to_its_first_step(runs):
    out = runs["out"]
    first, again = out["pre_tp2pp1"], out["again_tp2pp1"]
    # Launches at once that share a cache build it once: the TP2 checkpoint (pretraining and SFT), the corpus
    # (pretraining at TP2 and PP2); the others wait for it and say so.
    tp2 = out["pre_tp2pp1"] + out["sft_tp2pp1"]
    assert tp2.count("HF -> Megatron checkpoint: building") == 1
    corpus = out["pre_tp2pp1"] + out["pre_tp1pp2"]
    assert corpus.count("preprocessed corpus.jsonl: building") == 1
    assert "HF -> Megatron checkpoint: reusing" in again and "preprocessed corpus.jsonl: reusing" in again
    assert "building" not in again.replace("HF copy of iteration 3: building", "")
    assert "time to first step:" in first and "time to first step:" in again
    assert loss_strings(again) == loss_strings(first)
