"""The flags of training from an HF folder and raw data: what a launch's flags name after validation, and
the one-line refusals (torch-free, no files built)."""

from __future__ import annotations

import json
import os

import pytest

from mindspeed_llm.config.flags import ArgumentError, parse_args
from mindspeed_llm.config.paths import check_paths
from mindspeed_llm.config.validate import validate_args
from tests.helpers.paths import HF_CONFIG_FIXTURES

BASE = (
    "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 2 --lr 1e-3 "
    "--swiglu --disable-bias-linear --qk-layernorm --kv-channels 32"
)


def _hf(folder, architecture: str = "Qwen3ForCausalLM"):
    """An HF folder as the flags see it: config.json, a safetensors file, tokenizer files."""
    folder.mkdir(parents=True)
    cfg = json.loads((HF_CONFIG_FIXTURES / "qwen3-0.6b.json").read_text())
    cfg["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _args(text: str, world: int = 1):
    return validate_args(parse_args((BASE + " " + text).split()), world)


def _error(text: str, world: int = 1) -> str:
    with pytest.raises(ArgumentError) as info:
        _args(text, world)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_hf_load_folder_names_its_cache_and_tokenizer_and_both_conversions(tmp_path):
    hf = _hf(tmp_path / "qwen3_hf")
    raw = tmp_path / "data" / "alpaca.parquet"
    raw.parent.mkdir()
    raw.write_bytes(b"")
    args = _args(
        f"--load {hf} --save {tmp_path / 'save'} --data-path {raw} --tensor-model-parallel-size 2", world=2
    )
    # MindSpeed-LLM's defaults: {load}/megatron_cache_tp{TP}pp{PP}ep{EP}, the tokenizer and config of --load,
    # both directions on (no conversion flag given), the model type read from config.json.
    assert args.load == os.path.join(str(hf), "megatron_cache_tp2pp1ep1")
    assert args.tokenizer_name_or_path == str(hf) and args.hf_cfg_dir == str(hf)
    assert args.enable_hf2mg_convert and args.enable_mg2hf_convert and args.model_type_hf == "qwen3"
    (prefix,) = args.data_path
    assert prefix.endswith("/alpaca_text_document") and ".mindspeed_cache-" in prefix
    assert os.path.dirname(os.path.dirname(prefix)) == str(raw.parent)
    check_paths(args)  # the caches are built at start-up: not refused before


def test_explicit_hf2mg_alone_makes_no_hf_copies_and_weights_follow_the_prefixes(tmp_path):
    hf = _hf(tmp_path / "hf")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("")
    b.write_text("")
    args = _args(
        f"--load {hf} --enable-hf2mg-convert --save {tmp_path / 's'} --mg-save-dir {tmp_path / 'mg'} "
        f"--data-path 0.3 {a} 0.7 {b} --handler-name GeneralPretrainHandler --append-eod"
    )
    assert not args.enable_mg2hf_convert and args.load == str(tmp_path / "mg")
    w1, p1, w2, p2 = args.data_path
    assert (w1, w2) == ("0.3", "0.7") and p1.endswith("/a_text_document") and p2.endswith("/b_text_document")
    # Other preprocessing settings are another cache folder; the same settings the same one.
    other = _args(f"--load {hf} --data-path {a} --handler-name GeneralPretrainHandler")
    assert os.path.dirname(other.data_path[0]) != os.path.dirname(p1)
    again = _args(f"--load {hf} --enable-hf2mg-convert --data-path 0.3 {a} 0.7 {b} --append-eod")
    assert again.data_path[1] == p1


def test_sft_with_a_raw_parquet_names_the_instruction_prefix(tmp_path):
    hf = _hf(tmp_path / "hf")
    raw = tmp_path / "alpaca.parquet"
    raw.write_bytes(b"")
    args = _args(
        f"--load {hf} --stage sft --prompt-type qwen3 --handler-name AlpacaStyleInstructionHandler "
        f"--enable-thinking true --data-path {raw}"
    )
    assert args.data_path[0].endswith("/alpaca") and args.is_instruction_dataset
    check_paths(args)


@pytest.mark.parametrize(
    "case",
    [
        "neither",
        "unknown_type",
        "missing_raw",
        "handler",
        "no_handler",
        "no_prompt",
        "hf2mg_megatron",
        "mg2hf_no_save",
        "thinking",
        "mg_dir_busy",
    ],
)
def test_bad_input_is_one_line_naming_the_flag_or_path(tmp_path, case):
    hf = _hf(tmp_path / "hf")
    raw = tmp_path / "rows.jsonl"
    raw.write_text("")
    if case == "neither":
        other = tmp_path / "other"
        other.mkdir()
        (other / "notes.txt").write_text("x")
        assert f"--load {other} is neither an HF model folder" in _error(
            f"--load {other} --mock-data --tokenizer-type NullTokenizer --vocab-size 100"
        )
    elif case == "unknown_type":
        gpt = _hf(tmp_path / "gpt2", "GPT2LMHeadModel")
        message = _error(f"--load {gpt} --mock-data")
        assert f"--load {gpt}: model type GPT2LMHeadModel is not supported" in message
    elif case == "missing_raw":
        assert f"--data-path {tmp_path / 'nope.jsonl'}: no such file" in _error(
            f"--load {hf} --data-path {tmp_path / 'nope.jsonl'}"
        )
    elif case == "handler":
        assert "--handler-name AlpacaStyleInstructionHandler writes fine-tuning data" in _error(
            f"--load {hf} --data-path {raw} --handler-name AlpacaStyleInstructionHandler"
        )
    elif case == "no_handler":
        assert "needs an instruction handler" in _error(
            f"--load {hf} --stage sft --prompt-type qwen3 --data-path {raw}"
        )
    elif case == "no_prompt":
        assert "needs --prompt-type" in _error(
            f"--load {hf} --stage sft --data-path {raw} --handler-name AlpacaStyleInstructionHandler"
        )
    elif case == "hf2mg_megatron":
        mg = tmp_path / "mg"
        mg.mkdir()
        (mg / "latest_checkpointed_iteration.txt").write_text("1")
        assert "is a Megatron checkpoint, not an HF folder" in _error(
            f"--load {mg} --enable-hf2mg-convert --mock-data --tokenizer-type NullTokenizer --vocab-size 100"
        )
    elif case == "mg2hf_no_save":
        assert "--enable-mg2hf-convert writes HF copies of the saves: give --save" in _error(
            f"--load {hf} --enable-mg2hf-convert --mock-data"
        )
    elif case == "thinking":
        assert "--enable-thinking false is not supported" in _error(
            f"--load {hf} --stage sft --prompt-type qwen3 --handler-name AlpacaStyleInstructionHandler "
            f"--enable-thinking false --data-path {raw}"
        )
    elif case == "mg_dir_busy":
        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "mine.txt").write_text("x")
        assert f"--mg-save-dir {busy} holds files that are not a converted checkpoint" in _error(
            f"--load {hf} --mg-save-dir {busy} --mock-data"
        )


def test_preprocessing_flags_with_preprocessed_data_are_accepted(tmp_path):
    # MindSpeed-LLM's scripts pass --handler-name with a prefix too; start-up notes they are unused.
    from mindspeed_llm.from_hf.config import plan_from_args

    args = parse_args(
        (
            BASE + " --data-path d_text_document --handler-name GeneralPretrainHandler --workers 4 "
            "--tokenizer-type NullTokenizer --vocab-size 100"
        ).split()
    )
    assert plan_from_args(args).unused_preprocess_flags == ("--handler-name", "--workers")
    assert _args(
        "--data-path d_text_document --handler-name GeneralPretrainHandler "
        "--tokenizer-type NullTokenizer --vocab-size 100"
    ).data_path == ["d_text_document"]
