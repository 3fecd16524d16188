"""Every HF setting we cannot run exactly is refused by the converter: one ``error:`` line naming the key and
its value, exit code 2, nothing written -- from an HF folder (hf->mg) and from a checkpoint's recorded config
(mg->hf, mg->mg)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from mindspeed_llm.convert.cli import main
from tests.checkpoint.record_edits import edit_recorded_model
from tests.checkpoint.tiny_models import make_tiny_hf_model

YARN = {"rope_type": "yarn", "original_max_position_embeddings": 64}  # no factor
CASES = {
    # name: (model kind, config.json changes, what the error line must say)
    "rope_yarn": ("qwen3", {"rope_scaling": YARN}, "rope_scaling rope_type='yarn' has no factor"),
    "rope_dynamic": (
        "llama",
        {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
        "rope_scaling rope_type='dynamic' is not supported",
    ),
    "rope_longrope": (
        "llama",
        {"rope_scaling": {"rope_type": "longrope", "factor": 2.0}},
        "rope_scaling short_factor must be a list of 8 numbers",
    ),
    "rope_linear_extra": (
        "qwen2",
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0, "attention_factor": 2.0}},
        "rope_scaling attention_factor=2.0 is not supported for rope_type 'linear'",
    ),
    "rope_llama3_extra": (
        "llama",
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "beta_fast": 32}},
        "rope_scaling beta_fast=32 is not supported for rope_type 'llama3'",
    ),
    "partial_rotary_factor": (
        "llama",
        {"partial_rotary_factor": 0.5},
        "partial_rotary_factor=0.5 is not supported",
    ),
    "hidden_act": (
        "qwen3",
        {"hidden_act": "gelu_pytorch_tanh"},
        "hidden_act='gelu_pytorch_tanh' is not supported",
    ),
    "attention_bias_qwen3": (
        "qwen3",
        {"attention_bias": True},
        "attention_bias=True is not supported for Qwen3ForCausalLM",
    ),
    "attention_bias_llama": (
        "llama",
        {"attention_bias": True},
        "attention_bias=True is not supported for LlamaForCausalLM",
    ),
    "mlp_bias": ("llama", {"mlp_bias": True}, "mlp_bias=True is not supported"),
    "unknown_key": (
        "qwen3",
        {"attn_logit_softcapping": 50.0},
        "config.json key attn_logit_softcapping=50.0 is not known for Qwen3ForCausalLM",
    ),
    "layer_types": (
        "qwen3",
        {"layer_types": ["full_attention"] * 3 + ["chunked_attention"]},
        "layer_types entry 'chunked_attention' is not supported",
    ),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("refused")
    out = {}
    for kind in ("qwen3", "qwen2", "llama", "mistral"):
        out[kind] = str(root / kind)
        make_tiny_hf_model(out[kind], kind)
    mg = str(root / "qwen3_mg")
    assert (
        main(
            [
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--load-dir",
                out["qwen3"],
                "--save-dir",
                mg,
                "--no-progress",
            ]
        )
        == 0
    )
    out["qwen3_mg"] = mg
    return out


def _run(capsys, *argv) -> tuple[int, list[str]]:
    code = main([*argv, "--no-progress"])
    return code, capsys.readouterr().err.strip().splitlines()


def _nothing_written(parent, target) -> None:
    assert not os.path.exists(target)
    assert not [p for p in os.listdir(parent) if ".tmp-" in p], os.listdir(parent)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_to_mg_refuses_the_key(capsys, tmp_path, folders, case):
    kind, changes, needle = CASES[case]
    load = tmp_path / "hf"
    shutil.copytree(folders[kind], load)
    config = json.loads((load / "config.json").read_text())
    config.update(changes)
    (load / "config.json").write_text(json.dumps(config))
    code, err = _run(capsys, "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(load),
                     "--save-dir", str(tmp_path / "mg"))
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {load / 'config.json'}: ") and needle in err[0], err
    _nothing_written(tmp_path, tmp_path / "mg")


@pytest.mark.parametrize("save_type", ["hf", "mg"])
def test_a_recorded_config_with_a_refused_key_is_refused_from_mg(capsys, tmp_path, folders, save_type):
    mg = tmp_path / "mg"
    shutil.copytree(folders["qwen3_mg"], mg)
    rank_file = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(rank_file, weights_only=False)
    # only the recorded config speaks (no HF folder recorded)
    dynamic = {"rope_type": "dynamic", "factor": 2.0}
    edit_recorded_model(state, hf_config={**state["args"].hf_config, "rope_scaling": dynamic}, hf_dir=None)
    torch.save(state, rank_file)
    code, err = _run(capsys, "--load-model-type", "mg", "--save-model-type", save_type, "--load-dir", str(mg),
                     "--save-dir", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and "rope_scaling rope_type='dynamic' is not supported" in err[0], err
    _nothing_written(tmp_path, tmp_path / "out")


def test_verify_refuses_more_tokens_than_an_active_sliding_window(capsys, tmp_path, folders):
    load = tmp_path / "mistral"
    shutil.copytree(folders["mistral"], load)
    config = json.loads((load / "config.json").read_text())
    config["sliding_window"] = 8
    (load / "config.json").write_text(json.dumps(config))
    hf2mg = ["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(load), "--verify"]
    code, err = _run(capsys, *hf2mg, "--save-dir", str(tmp_path / "mg"), "--verify-tokens", "16")
    assert code == 2 and len(err) == 1, err
    assert "sliding_window=8 is active for MistralForCausalLM and --verify-tokens 16 is longer" in err[0]
    _nothing_written(tmp_path, tmp_path / "mg")
    # Within the window the model is exact: converted and verified.
    assert _run(capsys, *hf2mg, "--save-dir", str(tmp_path / "ok"), "--verify-tokens", "8")[0] == 0
