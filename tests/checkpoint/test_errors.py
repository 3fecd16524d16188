"""Bad input: one clear ``error:`` line naming the path/flag and the fix, exit code 2, nothing left behind."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mindspeed_llm.checkpoint.cli import main
from tests.checkpoint.tiny_models import make_tiny_hf_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    qwen, llama = str(root / "qwen"), str(root / "llama")
    make_tiny_hf_model(qwen, "qwen2")
    make_tiny_hf_model(llama, "llama")
    mg = str(root / "mg")
    assert main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", qwen, "--save-dir", mg,
                 "--add-qkv-bias", "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2",
                 "--no-progress"]) == 0
    return {"qwen": qwen, "llama": llama, "mg": mg}


def _run(capsys, *argv):
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _hf2mg(load, save, *extra):
    return ["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(load), "--save-dir", str(save),
            *extra]


def _assert_clean(parent, target=None):
    assert not [p for p in os.listdir(parent) if ".tmp-" in p], os.listdir(parent)
    if target is not None:
        assert not os.path.exists(target)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


@pytest.mark.parametrize("case", ["missing", "empty", "no_safetensors", "bin_only"])
def test_bad_load_dir(capsys, tmp_path, case):
    load = tmp_path / "hf"
    if case != "missing":
        load.mkdir()
    if case in ("no_safetensors", "bin_only"):
        (load / "config.json").write_text("{}")
    if case == "bin_only":
        torch.save({}, load / "pytorch_model.bin")
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and err.startswith("error: ") and str(load) in err
    expected = {"missing": "does not exist", "empty": "is empty", "no_safetensors": "no *.safetensors",
                "bin_only": "convert them to safetensors"}[case]
    assert expected in err
    _assert_clean(tmp_path, tmp_path / "out")


def test_config_weights_mismatch_lists_missing_tensors(capsys, tmp_path, models):
    load = _copy(models["llama"], tmp_path / "hf")
    tensors = load_file(os.path.join(load, "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"], tensors["model.norm.weight"]
    save_file(tensors, os.path.join(load, "model.safetensors"), metadata={"format": "pt"})
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and "model.layers.1.mlp.up_proj.weight" in err and "model.norm.weight" in err
    _assert_clean(tmp_path, tmp_path / "out")


def test_config_shape_mismatch(capsys, tmp_path, models):
    load = _copy(models["llama"], tmp_path / "hf")
    cfg_path = os.path.join(load, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["intermediate_size"] = 128
    json.dump(cfg, open(cfg_path, "w"))
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and "config.json implies" in err


@pytest.mark.parametrize("flags,needle", [
    (["--target-tensor-parallel-size", "3"], "--target-tensor-parallel-size 3 does not divide num_attention_heads"),
    (["--target-tensor-parallel-size", "4"], "does not divide num_key_value_heads"),
    (["--target-pipeline-parallel-size", "3"], "--target-pipeline-parallel-size 3 does not divide num_hidden_layers"),
    (["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,2"], "--num-layer-list 1,2 sums to 3"),
    (["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,1,2"], "--num-layer-list has 3 entries"),
    (["--padded-vocab-size", "100"], "--padded-vocab-size 100 is smaller"),
])
def test_parallel_and_vocab_flags(capsys, tmp_path, models, flags, needle):
    code, err = _run(capsys, *_hf2mg(models["llama"], tmp_path / "out", *flags))
    assert code == 2 and needle in err, err
    _assert_clean(tmp_path, tmp_path / "out")


def test_qkv_bias_flag_must_match_the_weights(capsys, tmp_path, models):
    code, err = _run(capsys, *_hf2mg(models["llama"], tmp_path / "a", "--add-qkv-bias"))
    assert code == 2 and "drop --add-qkv-bias" in err
    code, err = _run(capsys, *_hf2mg(models["qwen"], tmp_path / "b"))
    assert code == 2 and "add --add-qkv-bias" in err
    code, err = _run(capsys, *_hf2mg(models["qwen"], tmp_path / "c", "--add-qkv-bias", "--model-type-hf", "mistral"))
    assert code == 2 and "contradicts" in err
    _assert_clean(tmp_path)


def test_save_dir_not_writable(capsys, tmp_path, models):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = _run(capsys, *_hf2mg(models["llama"], blocker / "out"))
    assert code == 2 and "not writable" in err and str(blocker) in err


def test_save_dir_holding_a_checkpoint_is_refused_unless_overwrite(capsys, tmp_path, models):
    target = tmp_path / "out"
    assert _run(capsys, *_hf2mg(models["llama"], target))[0] == 0
    before = sorted(os.listdir(target))
    code, err = _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias"))
    assert code == 2 and "--overwrite" in err and sorted(os.listdir(target)) == before
    assert _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias", "--overwrite"))[0] == 0
    _assert_clean(tmp_path)


def test_failure_midway_leaves_nothing(capsys, tmp_path, models):
    """A damaged rank file of the last stage is met after stage 0 was written: no partial output."""
    mg = _copy(models["mg"], tmp_path / "mg")
    path = os.path.join(mg, "iter_0000001", "mp_rank_01_001", "model_optim_rng.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    code, err = _run(capsys, "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", mg,
                     "--save-dir", str(tmp_path / "hf"))
    assert code == 2 and "mp_rank_01_001" in err and "damaged" in err
    _assert_clean(tmp_path, tmp_path / "hf")


def test_mg_checkpoint_with_missing_rank(capsys, tmp_path, models):
    mg = _copy(models["mg"], tmp_path / "mg")
    shutil.rmtree(os.path.join(mg, "iter_0000001", "mp_rank_01_001"))
    code, err = _run(capsys, "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", mg,
                     "--save-dir", str(tmp_path / "hf"))
    assert code == 2 and "missing rank folders mp_rank_01_001" in err
    _assert_clean(tmp_path, tmp_path / "hf")


def test_mg_load_dir_that_is_not_a_checkpoint(capsys, tmp_path, models):
    code, err = _run(capsys, "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", models["qwen"],
                     "--save-dir", str(tmp_path / "hf"))
    assert code == 2 and "latest_checkpointed_iteration.txt" in err


def test_mg_source_flags_must_agree_with_the_checkpoint(capsys, tmp_path, models):
    base = ["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", models["mg"]]
    code, err = _run(capsys, *base, "--save-dir", str(tmp_path / "a"), "--model-type-hf", "mistral")
    assert code == 2 and "contradicts" in err
    llama_mg = str(tmp_path / "llama_mg")
    assert _run(capsys, *_hf2mg(models["llama"], llama_mg))[0] == 0
    code, err = _run(capsys, "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", llama_mg,
                     "--save-dir", str(tmp_path / "b"), "--add-qkv-bias")
    assert code == 2 and "drop --add-qkv-bias" in err
    # MindSpeed's mg->hf form passes --model-type-hf llama2 --add-qkv-bias for Qwen: accepted
    assert _run(capsys, *base, "--save-dir", str(tmp_path / "c"), "--model-type-hf", "llama2", "--add-qkv-bias")[0] == 0
    _assert_clean(tmp_path)
