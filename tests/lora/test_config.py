"""The LoRA settings: one declaration of the --lora-* flags for the training command line and convert_ckpt.py,
their checks (one line naming the flag and the fix), and LoraConfig from flags, checkpoint args and peft's
adapter_config.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from mindspeed_llm.lora.config import (
    LoraConfig,
    LoraError,
    add_lora_flags,
    check_lora_flags,
    check_recorded,
    recorded_flags_given,
)
from mindspeed_llm.lora.keys import TARGET_MODULES
from tests.conftest import REPO_ROOT

ALL = "linear_qkv linear_proj linear_fc1 linear_fc2"


def _training(argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_lora_flags(parser)
    parser.add_argument("--load")
    parser.add_argument("--save")
    parser.add_argument("--ckpt-format", default="torch")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv.split())


def _converter(argv: str) -> argparse.Namespace:
    from mindspeed_llm.convert.cli import build_parser

    return build_parser().parse_args(argv.split())


def test_importing_the_settings_loads_no_torch():
    code = ("import __main__; __main__.MINDSPEED_LLM_LATE_PATCHES = True\n"
            "import sys, mindspeed_llm.lora, mindspeed_llm.lora.config, mindspeed_llm.lora.keys\n"
            "print(sorted(m for m in ('torch', 'megatron', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_training_flags_and_their_defaults():
    args = _training("")
    assert (args.lora_target_modules, args.lora_r, args.lora_alpha, args.lora_dropout) == ([], 16, 32, 0.0)
    assert (args.lora_load, args.lora_ckpt_filter) == (None, False)
    assert not hasattr(args, "save_lora_to_hf")
    assert LoraConfig.from_args(args) is None  # no --lora-target-modules: no LoRA
    cfg = LoraConfig.from_args(_training(f"--lora-target-modules {ALL} --lora-r 4 --lora-alpha 8 "
                                         "--lora-dropout 0.1 --lora-load /a --lora-ckpt-filter --seed 7"))
    assert cfg == LoraConfig(r=4, alpha=8.0, dropout=0.1, target_modules=TARGET_MODULES, seed=7, load="/a",
                             ckpt_filter=True)
    assert cfg.scaling == 2.0


def test_converter_flags_default_to_what_the_adapter_records():
    args = _converter("--load-model-type mg --save-model-type hf --load-dir a --save-dir b")
    assert (args.lora_r, args.lora_alpha, args.lora_target_modules) == (None, None, None)
    assert args.lora_load is None
    assert args.save_lora_to_hf is False
    assert not hasattr(args, "lora_dropout") and not hasattr(args, "lora_ckpt_filter")
    assert recorded_flags_given(args) == {}
    given = _converter("--load-model-type mg --save-model-type hf --load-dir a --save-dir b --lora-r 4 "
                       "--lora-target-modules linear_fc1 linear_qkv")
    assert recorded_flags_given(given) == {"r": 4, "target_modules": ("linear_fc1", "linear_qkv")}


@pytest.mark.parametrize("argv, words", [
    ("--lora-load /x", ["--lora-load", "without --lora-target-modules"]),
    ("--lora-ckpt-filter", ["--lora-ckpt-filter", "without --lora-target-modules"]),
    ("--lora-target-modules linear_qkv --lora-r 0", ["--lora-r must be positive, got 0"]),
    ("--lora-target-modules linear_qkv --lora-alpha -1", ["--lora-alpha must be positive"]),
    ("--lora-target-modules linear_qkv --lora-alpha nan", ["--lora-alpha must be positive and finite, got"]),
    ("--lora-target-modules linear_qkv --lora-dropout 1.0", ["--lora-dropout must be in [0, 1)"]),
    ("--lora-target-modules linear_qkv --ckpt-format torch_dist",
     ["--ckpt-format torch_dist", "--ckpt-format torch"]),
    ("--lora-target-modules linear_qkv --lora-load /a", ["--lora-load /a needs --load"]),
    ("--lora-target-modules linear_qkv --lora-load /nonexistent/adapter --load /b",
     ["--lora-load", "not a folder"]),
])
def test_training_flags_refused_with_a_line(argv, words):
    with pytest.raises(LoraError) as exc:
        check_lora_flags(_training(argv))
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert "\n" not in str(exc.value) and isinstance(exc.value, ValueError)


def test_lora_load_may_name_the_save_folder_before_it_exists(tmp_path):
    check_lora_flags(_training(f"--lora-target-modules linear_qkv --load {tmp_path} "
                               f"--lora-load {tmp_path}/new --save {tmp_path}/new"))


@pytest.mark.parametrize("argv, words", [
    ("--load-model-type hf --save-model-type mg --save-lora-to-hf",
     ["--save-lora-to-hf", "--load-model-type mg"]),
    ("--load-model-type hf --save-model-type mg --lora-r 4 --lora-alpha 8",
     ["--lora-r --lora-alpha: a peft adapter folder records these"]),
    ("--load-model-type mg --save-model-type hf --lora-load /nonexistent",
     ["--lora-load /nonexistent is not a folder"]),
])
def test_converter_flags_refused_with_a_line(tmp_path, capsys, argv, words):
    from mindspeed_llm.convert.cli import main

    full = f"{argv} --load-dir {tmp_path} --save-dir {tmp_path}/out"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LoraError) as exc:
        check_lora_flags(_converter(full), converter=True)
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert main(full.split()) == 2  # convert_ckpt.py: one line, exit 2, before torch is imported
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


def test_converter_flags_must_agree_with_the_recorded_adapter():
    recorded = LoraConfig(r=4, alpha=8.0, target_modules=("linear_qkv", "linear_fc2"))
    check_recorded({"r": 4, "alpha": 8.0, "target_modules": ("linear_fc2", "linear_qkv")}, recorded, "/ckpt")
    with pytest.raises(LoraError, match=r"--lora-alpha 16.0 contradicts the adapter in /ckpt \(8.0\): drop"):
        check_recorded({"alpha": 16.0}, recorded, "/ckpt")
    with pytest.raises(LoraError, match=r"--lora-r 4 contradicts the adapter in /ckpt \(none\)"):
        check_recorded({"r": 4}, None, "/ckpt")


def test_checkpoint_args_round_trip_and_defaults():
    cfg = LoraConfig(r=4, alpha=8.0, dropout=0.05, target_modules=("linear_qkv", "linear_proj"))
    recorded = argparse.Namespace(**cfg.checkpoint_args())
    assert recorded.lora_target_modules == ["linear_qkv", "linear_proj"]
    assert LoraConfig.from_checkpoint_args(recorded, r=4, target_modules=cfg.target_modules) == cfg
    # A checkpoint whose args say nothing about LoRA: alpha 2r, no dropout.
    bare = LoraConfig.from_checkpoint_args(argparse.Namespace(), r=8, target_modules=("linear_fc1",))
    assert (bare.alpha, bare.dropout) == (16.0, 0.0)


def test_peft_config_round_trip_and_what_peft_reads(tmp_path):
    from peft import LoraConfig as PeftLoraConfig

    cfg = LoraConfig(r=4, alpha=8.0, dropout=0.1, target_modules=("linear_qkv", "linear_fc1"))
    written = cfg.to_peft_config("/hf")
    assert LoraConfig.from_peft_config(written, "x.json") == cfg
    (tmp_path / "adapter_config.json").write_text(json.dumps(written))
    theirs = PeftLoraConfig.from_pretrained(str(tmp_path))
    assert (theirs.r, theirs.lora_alpha, theirs.lora_dropout) == (4, 8.0, 0.1)
    assert set(theirs.target_modules) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}


@pytest.mark.parametrize("change, words", [
    ({"use_dora": True}, ["use_dora=True is not supported"]),
    ({"use_rslora": True}, ["use_rslora=True"]),
    ({"rank_pattern": {"q_proj": 8}}, ["rank_pattern is set"]),
    ({"peft_type": "IA3"}, ["peft_type IA3 is not LoRA"]),
    ({"target_modules": ["q_proj", "k_proj", "v_proj", "lm_head"]},
     ["['lm_head'] have no megatron LoRA counterpart"]),
    ({"target_modules": ["gate_proj"]}, ["adapts gate_proj but not all of gate_proj, up_proj"]),
    ({"r": 0}, ["r is 0, not a positive rank"]),
])
def test_peft_settings_without_a_counterpart_are_refused_by_name(change, words):
    config = {**LoraConfig().to_peft_config(None), **change}
    with pytest.raises(LoraError) as exc:
        LoraConfig.from_peft_config(config, "/p/adapter_config.json")
    assert str(exc.value).startswith("/p/adapter_config.json: ")
    assert all(w in str(exc.value) for w in words), str(exc.value)
