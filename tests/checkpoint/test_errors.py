"""Bad input: one clear ``error:`` line naming the path/flag and the fix, exit code 2, nothing left behind."""

import json
import os
import shutil
import signal
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mindspeed_llm.convert.cli import main
from mindspeed_llm.runtime.checkpoint import load_rank_state
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.helpers.launch import WITH_FILE_SIZE_LIMIT, StartedScript
from tests.helpers.paths import REPO_ROOT
from tests.tool_process import (
    error_line,
    leftovers,
    read_only_dir,
    signal_when,
    tree_digest,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    qwen, llama = str(root / "qwen"), str(root / "llama")
    make_tiny_hf_model(qwen, "qwen2")
    make_tiny_hf_model(llama, "llama")
    mg = str(root / "mg")
    assert (
        main(
            [
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--load-dir",
                qwen,
                "--save-dir",
                mg,
                "--add-qkv-bias",
                "--target-tensor-parallel-size",
                "2",
                "--target-pipeline-parallel-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    return {"qwen": qwen, "llama": llama, "mg": mg}


def _run(capsys, *argv):
    """(exit code, the error line); a failure prints exactly one ``error:`` line and no traceback."""
    code = main([*argv, "--no-progress"])
    text = capsys.readouterr().err
    err = text.strip().splitlines()
    assert "Traceback" not in text
    if code:
        assert len([ln for ln in err if ln.startswith("error:")]) == 1, text
    return code, err[-1] if err else ""


def _hf2mg(load, save, *extra):
    return [
        "--load-model-type",
        "hf",
        "--save-model-type",
        "mg",
        "--load-dir",
        str(load),
        "--save-dir",
        str(save),
        *extra,
    ]


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


@pytest.mark.parametrize(
    "flags,needle",
    [
        (
            ["--target-tensor-parallel-size", "3"],
            "--target-tensor-parallel-size 3 does not divide num_attention_heads",
        ),
        (["--target-tensor-parallel-size", "4"], "does not divide num_key_value_heads"),
        (
            ["--target-pipeline-parallel-size", "3"],
            "--target-pipeline-parallel-size 3 does not divide num_hidden_layers",
        ),
        (
            ["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,2"],
            "--num-layer-list 1,2 sums to 3",
        ),
        (
            ["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,1,2"],
            "--num-layer-list has 3 entries",
        ),
        (["--padded-vocab-size", "100"], "--padded-vocab-size 100 is smaller"),
    ],
)
def test_parallel_and_vocab_flags(capsys, tmp_path, models, flags, needle):
    code, err = _run(capsys, *_hf2mg(models["llama"], tmp_path / "out", *flags))
    assert code == 2 and needle in err, err
    _assert_clean(tmp_path, tmp_path / "out")


def test_qkv_bias_flag_must_match_the_weights(capsys, tmp_path, models):
    code, err = _run(capsys, *_hf2mg(models["llama"], tmp_path / "a", "--add-qkv-bias"))
    assert code == 2 and "drop --add-qkv-bias" in err
    code, err = _run(capsys, *_hf2mg(models["qwen"], tmp_path / "b"))
    assert code == 2 and "add --add-qkv-bias" in err
    code, err = _run(
        capsys, *_hf2mg(models["qwen"], tmp_path / "c", "--add-qkv-bias", "--model-type-hf", "mistral")
    )
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
    code, err = _run(
        capsys,
        "--load-model-type",
        "mg",
        "--save-model-type",
        "hf",
        "--load-dir",
        models["qwen"],
        "--save-dir",
        str(tmp_path / "hf"),
    )
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
    assert (
        _run(capsys, *base, "--save-dir", str(tmp_path / "c"), "--model-type-hf", "llama2", "--add-qkv-bias")[
            0
        ]
        == 0
    )
    _assert_clean(tmp_path)


# ---- nothing lost: --overwrite never reaches what is read --------------------------------------------------
def _mg2hf(load, save, *extra):
    return [
        "--load-model-type",
        "mg",
        "--save-model-type",
        "hf",
        "--load-dir",
        str(load),
        "--save-dir",
        str(save),
        *extra,
    ]


def _mg2mg(load, save, *extra):
    return [
        "--load-model-type",
        "mg",
        "--save-model-type",
        "mg",
        "--load-dir",
        str(load),
        "--save-dir",
        str(save),
        *extra,
    ]


@pytest.mark.parametrize("direction,where", [
    ("hf2mg", "same"), ("hf2mg", "inside"), ("hf2mg", "symlink"), ("hf2mg", "relative"),
    ("mg2hf", "same"), ("mg2hf", "contains"), ("mg2mg", "same"), ("mg2mg", "inside"),
])
def test_save_dir_overlapping_load_dir_is_refused_even_with_overwrite(capsys, tmp_path, models, monkeypatch,
                                                                      direction, where):
    src = _copy(models["llama"] if direction == "hf2mg" else models["mg"], tmp_path / "src")
    before = tree_digest(src)
    save = {
        "same": src,
        "inside": os.path.join(src, "out"),
        "contains": str(tmp_path),
        "symlink": tmp_path / "link",
        "relative": "src",
    }[where]
    if where == "symlink":
        os.symlink(src, save)
    monkeypatch.chdir(tmp_path)
    build = {"hf2mg": _hf2mg, "mg2hf": _mg2hf, "mg2mg": _mg2mg}[direction]
    flags = ["--overwrite", "--overwrite-training-checkpoint", "--overwrite-hf-model"]
    if direction == "mg2mg":
        flags += ["--target-tensor-parallel-size", "1"]
    code, err = _run(capsys, *build(src, save, *flags))
    assert code == 2 and "--load-dir" in err and "would delete the source" in err, err
    assert tree_digest(src) == before
    assert leftovers(tmp_path) == []


def _training_checkpoint(mg_from, dst, with_optimizer=True):
    """A converted checkpoint turned into what training leaves: optimizer (or, --no-save-optim, RNG) state."""
    root = _copy(mg_from, dst)
    for folder, _, files in os.walk(root):
        if "model_optim_rng.pt" in files:
            path = os.path.join(folder, "model_optim_rng.pt")
            state = torch.load(path, weights_only=False)
            if with_optimizer:
                state["optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-4}]}
                state["opt_param_scheduler"] = {"num_steps": 4}
            state["rng_state"] = [{"random_rng_state": (3, (1, 2), None)}]
            torch.save(state, path)
    return root


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_overwrite_never_replaces_a_training_checkpoint_unless_named(
    capsys, tmp_path, models, with_optimizer
):
    target = _training_checkpoint(models["mg"], tmp_path / "train", with_optimizer)
    before = tree_digest(target)
    code, err = _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias", "--overwrite"))
    assert code == 2 and "training checkpoint" in err and "--overwrite-training-checkpoint" in err, err
    code, err = _run(capsys, *_mg2mg(models["mg"], target, "--overwrite"))
    assert code == 2 and "--overwrite-training-checkpoint" in err
    assert tree_digest(target) == before
    assert (
        _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias", "--overwrite-training-checkpoint"))[0]
        == 0
    )
    assert "optimizer" not in load_rank_state(target, None, 0, 0, 1)
    assert leftovers(tmp_path) == []


def test_overwrite_never_replaces_an_hf_model_unless_named(capsys, tmp_path, models):
    target = _copy(models["llama"], tmp_path / "llama")
    before = tree_digest(target)
    code, err = _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias", "--overwrite"))
    assert code == 2 and "HF model" in err and "--overwrite-hf-model" in err, err
    assert tree_digest(target) == before
    assert _run(capsys, *_hf2mg(models["qwen"], target, "--add-qkv-bias", "--overwrite-hf-model"))[0] == 0
    assert os.path.isfile(os.path.join(target, "latest_checkpointed_iteration.txt"))


def test_overwrite_replaces_an_earlier_export_of_the_same_kind_only(capsys, tmp_path, models):
    out = tmp_path / "export"
    assert _run(capsys, *_mg2hf(models["mg"], out))[0] == 0
    assert os.path.isfile(out / ".mindspeed_llm_export.json")
    code, err = _run(capsys, *_mg2hf(models["mg"], out))
    assert code == 2 and "--overwrite" in err
    assert _run(capsys, *_mg2hf(models["mg"], out, "--overwrite"))[0] == 0
    assert not os.path.exists(out / "mg2hf")  # replaced in place, not nested
    # an HF export is not a Megatron output: hf->mg --overwrite refuses it; a folder of other files too
    code, err = _run(capsys, *_hf2mg(models["qwen"], out, "--add-qkv-bias", "--overwrite"))
    assert code == 2 and "holds an HF export" in err, err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, err = _run(capsys, *_hf2mg(models["qwen"], other, "--add-qkv-bias", "--overwrite"))
    assert code == 2 and "holds files" in err and (other / "notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_read_only_target_keeps_the_earlier_output(capsys, tmp_path, models):
    ro = tmp_path / "ro"
    ro.mkdir()
    assert _run(capsys, *_hf2mg(models["llama"], ro / "out"))[0] == 0
    before = tree_digest(ro)
    with read_only_dir(ro):
        code, err = _run(capsys, *_hf2mg(models["llama"], ro / "out", "--overwrite"))
        assert code == 1 and f"--save-dir {ro / 'out'} is not writable (" in err, (
            err
        )  # EROFS as root, EACCES otherwise
        code, err = _run(capsys, *_hf2mg(models["llama"], ro / "new"))
        assert code == 1 and "not writable" in err
        assert tree_digest(ro) == before


# ---- damaged inputs: one line naming the file, exit 2 ------------------------------------------------------
def _header(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write_header(path, header, payload):
    raw = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + payload)


def _damage_safetensors(folder, how):
    path = os.path.join(folder, "model.safetensors")
    header, payload = _header(path)
    first = next(k for k in header if k != "__metadata__")
    if how == "huge_length":
        open(path, "r+b").write(struct.pack("<Q", 1 << 62))
    elif how == "not_object":
        _write_header(path, [1, 2, 3], payload)
    elif how == "no_offsets":
        del header[first]["data_offsets"]
        _write_header(path, header, payload)
    elif how == "offsets_beyond":
        header[first]["data_offsets"] = [0, len(payload) + 4096]
        _write_header(path, header, payload)
    return path


@pytest.mark.parametrize("how,needle", [
    ("huge_length", "the header claims"), ("not_object", "not an object"),
    ("no_offsets", "lacks dtype, shape or data_offsets"), ("offsets_beyond", "is truncated"),
])
def test_damaged_safetensors_header(capsys, tmp_path, models, how, needle):
    load = _copy(models["llama"], tmp_path / "hf")
    path = _damage_safetensors(load, how)
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and err.startswith(f"error: {path}") and needle in err, err
    _assert_clean(tmp_path, tmp_path / "out")


def test_truncated_safetensors_index(capsys, tmp_path):
    load = str(tmp_path / "hf")
    make_tiny_hf_model(load, "llama", max_shard_size="100KB")
    index = os.path.join(load, "model.safetensors.index.json")
    text = open(index).read()
    open(index, "w").write(text[: len(text) // 2])
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and err.startswith(f"error: {index}") and "not valid JSON" in err, err
    _assert_clean(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("change,needle", [
    ({"num_attention_heads": 0}, "num_attention_heads is 0, expected a positive integer"),
    ({"hidden_size": None}, "hidden_size is null"),
    ({"rms_norm_eps": None}, "rms_norm_eps is null"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
    ("truncated", "not valid JSON"),
])
def test_damaged_config_json(capsys, tmp_path, models, change, needle):
    load = _copy(models["llama"], tmp_path / "hf")
    path = os.path.join(load, "config.json")
    if change == "truncated":
        text = open(path).read()
        open(path, "w").write(text[: len(text) // 3])
    else:
        cfg = json.load(open(path))
        cfg.update(change)
        json.dump(cfg, open(path, "w"))
    code, err = _run(capsys, *_hf2mg(load, tmp_path / "out"))
    assert code == 2 and path in err and needle in err, err
    _assert_clean(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("how,needle", [
    ("empty", "is empty (0 bytes)"), ("truncated", "cannot be read"), ("junk", "cannot be read"),
    ("tensor", "not a Megatron checkpoint dict"),
])
def test_damaged_rank_file(capsys, tmp_path, models, how, needle):
    mg = _copy(models["mg"], tmp_path / "mg")
    path = os.path.join(mg, "iter_0000001", "mp_rank_00_000", "model_optim_rng.pt")
    data = open(path, "rb").read()
    if how == "empty":
        open(path, "wb").close()
    elif how == "truncated":
        open(path, "wb").write(data[:1000])
    elif how == "junk":
        open(path, "wb").write(os.urandom(4096))
    else:
        torch.save(torch.zeros(3), path)
    code, err = _run(capsys, *_mg2hf(mg, tmp_path / "hf"))
    assert code == 2 and err.startswith(f"error: {path}") and needle in err, err
    _assert_clean(tmp_path, tmp_path / "hf")


@pytest.mark.parametrize("content,needle", [
    (b"\x00\xff\xfe\x89PNG", "holds binary data"), (b"", "holds ''"), (b"-3", "holds '-3'"),
])
def test_damaged_tracker(capsys, tmp_path, models, content, needle):
    mg = _copy(models["mg"], tmp_path / "mg")
    path = os.path.join(mg, "latest_checkpointed_iteration.txt")
    open(path, "wb").write(content)
    code, err = _run(capsys, *_mg2hf(mg, tmp_path / "hf"))
    assert code == 2 and err.startswith(f"error: {path}") and needle in err, err
    _assert_clean(tmp_path, tmp_path / "hf")


def test_rank_file_of_another_model(capsys, tmp_path, models):
    """A rank file copied in from a checkpoint of another model (llama, TP2 PP2 too): shapes disagree."""
    mg = _copy(models["mg"], tmp_path / "mg")
    other = str(tmp_path / "other")
    wide = str(tmp_path / "wide_hf")
    make_tiny_hf_model(wide, "qwen2", intermediate_size=192)
    assert _run(capsys, *_hf2mg(wide, other, "--add-qkv-bias", "--target-tensor-parallel-size", "2",
                                "--target-pipeline-parallel-size", "2"))[0] == 0
    name = os.path.join("iter_0000001", "mp_rank_01_001", "model_optim_rng.pt")
    shutil.copyfile(os.path.join(other, name), os.path.join(mg, name))
    code, err = _run(capsys, *_mg2hf(mg, tmp_path / "hf"))
    assert code == 2 and os.path.join(mg, name) in err and "another checkpoint" in err, err
    _assert_clean(tmp_path, tmp_path / "hf")


# ---- real processes: full disk (file-size limit) and signals -----------------------------------------------
CONVERT = REPO_ROOT / "convert_ckpt.py"


def _tool(script, *args) -> StartedScript:
    """``python SCRIPT ARGS`` from the repository root, as tests/tool_process.py starts a tool, but forked
    from an interpreter with torch imported (tests.helpers.launch); ``python WITH_FILE_SIZE_LIMIT BYTES TOOL
    ...`` runs the tool under a file-size limit (a write past it fails with EFBIG, as on a full disk)."""
    return StartedScript(script, *args)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["hf2mg", "mg2hf"])
def test_full_disk_keeps_the_earlier_output(tmp_path, models, direction):
    """A 64 KiB file-size limit in the child: torch.save / safetensors writes fail with EFBIG."""
    out = tmp_path / "out"
    src = models["qwen"] if direction == "hf2mg" else models["mg"]
    argv = _hf2mg(src, out, "--add-qkv-bias") if direction == "hf2mg" else _mg2hf(src, out)
    assert (
        main([*argv, "--no-progress"]) == 0
    )  # the earlier output (in this process: only the next run is limited)
    before, src_before = tree_digest(out), tree_digest(src)
    proc = _tool(WITH_FILE_SIZE_LIMIT, 64 * 1024, CONVERT, *argv, "--overwrite", "--no-progress").result()
    line = error_line(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert (
        f"--save-dir {out}: writing failed (File too large; the file-size limit" in line
        and "nothing was replaced" in line
    )
    assert tree_digest(out) == before and tree_digest(src) == src_before
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def larger_hf(tmp_path_factory):
    """Large enough (~40 MB) that writing its checkpoint takes many single steps, and its conversion at TP2
    PP2 (the earlier output each signal test copies: the next run on that --save-dir is signalled)."""
    root = tmp_path_factory.mktemp("larger")
    folder = str(root / "hf")
    make_tiny_hf_model(folder, "llama", hidden_size=256, intermediate_size=512, num_layers=8, vocab_size=8192)
    assert main(_larger_argv(folder, root / "out")) == 0
    return {"hf": folder, "out": root / "out"}


def _larger_argv(hf, out):
    return [*_hf2mg(hf, out, "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"),
            "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                           (signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGKILL, -9, None)])
def test_signal_while_writing_removes_temporaries_and_keeps_the_earlier_output(
    tmp_path, larger_hf, sig, code, word
):
    out = tmp_path / "out"
    argv = _larger_argv(larger_hf["hf"], out)
    shutil.copytree(larger_hf["out"], out)  # the earlier output (converted in this process)
    before, src_before = tree_digest(out), tree_digest(larger_hf["hf"])

    def writing() -> (
        bool
    ):  # the staging folder holds some finished rank files, not all 4: the tool is mid-write
        staged = [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp-")]
        if not staged:
            return False
        done = [os.path.isfile(os.path.join(tmp_path, staged[0], "iter_0000001", r, "model_optim_rng.pt"))
                for r in ("mp_rank_00_000", "mp_rank_01_000", "mp_rank_00_001", "mp_rank_01_001")]
        # With all 4 written only the commit is left: a signal then could land after it (the run exits 0).
        return any(done) and not all(done)

    rc, err = signal_when(lambda: _tool(CONVERT, *argv, "--overwrite"), writing, sig,
                          attempts=3)  # a run that slips through the short window writes the same checkpoint
    assert rc == code, err
    assert tree_digest(out) == before and tree_digest(larger_hf["hf"]) == src_before
    if word:
        line = error_line(err)
        assert word in line and f"{out} unchanged" in line, err
    else:  # kill -9: the staging folder stays until the next run on that --save-dir removes it
        assert [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp-")]
        assert _tool(CONVERT, *argv, "--overwrite").result().returncode == 0
    assert leftovers(tmp_path) == []


def test_bad_load_iteration_and_hf_dir_flags(capsys, tmp_path, models):
    with pytest.raises(SystemExit) as exit_info:
        main(_mg2hf(models["mg"], tmp_path / "a", "--load-iteration", "abc"))
    assert exit_info.value.code == 2 and "'abc' is not an iteration number" in capsys.readouterr().err
    code, err = _run(capsys, *_mg2hf(models["mg"], tmp_path / "b", "--hf-dir", str(tmp_path / "nope")))
    assert code == 2 and f"--hf-dir {tmp_path / 'nope'} holds no config.json" in err
    _assert_clean(tmp_path, tmp_path / "b")
