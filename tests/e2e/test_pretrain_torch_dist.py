"""``--ckpt-format torch_dist`` end to end on CPU/gloo: Megatron-LM's layout, exact resume (DP2 with the
distributed optimizer), a TP2 checkpoint loading at TP1, and convert_ckpt.py reading it like the legacy
format."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess

import pytest
import torch

from tests.e2e.pretrain_helpers import (
    PRETRAIN,
    assert_close_losses,
    loss_strings,
    losses,
    make_indexed_dataset,
    model_flags,
    run_pretrain,
    train_flags,
)
from tests.helpers.launch import torchrun_command
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import tiny_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2 HF model, its TP1 and TP2 conversions, and an indexed dataset."""
    root = tmp_path_factory.mktemp("torch_dist")
    hf, ckpts = tiny_checkpoints(root, {1: (1, 1), 2: (2, 1)})
    data = make_indexed_dataset(root / "data" / "corpus_text_document")
    return {"root": root, "hf": hf, "ckpts": ckpts, "flags": model_flags(hf) + train_flags(data)}


def _only_iteration(save, iteration: int, target):
    """A copy of ``save`` holding only ``iteration`` (as if the run had stopped there)."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(save / name, target / name)
    (target / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return target


def test_dp2_distributed_optimizer_resumes_exactly_from_megatron_layout(tiny):
    """DP2 + distributed optimizer, torch_dist: Megatron-LM's files; resuming at 3 repeats 4..6 bit for
    bit."""
    save = tiny["root"] / "dp2_save"
    flags = [*tiny["flags"], "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
             "--ckpt-format", "torch_dist"]
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][1]), "--finetune", "--save", str(save),
                            "--save-interval", "3", nproc=2)
    it3 = save / "iter_0000003"
    assert {"common.pt", "metadata.json", ".metadata"} <= {p.name for p in it3.iterdir()}
    assert any(p.suffix == ".distcp" for p in it3.iterdir())
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert not list(save.glob("*.tmp"))

    from megatron.core import dist_checkpointing

    # megatron-core's own readers recognise and read it.
    assert dist_checkpointing.check_is_distributed_checkpoint(str(it3))
    common = dist_checkpointing.load_common_state_dict(str(it3))
    assert common["iteration"] == 3 and common["args"].consumed_train_samples == 12
    assert (
        dist_checkpointing.load_content_metadata(str(it3))["distrib_optim_sharding_type"] == "dp_reshardable"
    )

    resumed = run_pretrain(*flags, "--load", str(_only_iteration(save, 3, tiny["root"] / "dp2_at3")), nproc=2)
    assert "iterations 4 to 6" in resumed
    assert loss_strings(resumed) == {it: s for it, s in loss_strings(unbroken).items() if it > 3}

    # The distributed optimizer's state reshards only over DP: TP2 refuses it with one line, before training.
    cmd = torchrun_command(
        PRETRAIN, *flags, "--tensor-model-parallel-size", "2", "--load", tiny["root"] / "dp2_at3", nproc=2
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
                          env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "--no-load-optim" in errors[0] and "TP=1 PP=1" in errors[0], proc.stderr[-3000:]
    assert (
        "]: Traceback" not in proc.stderr
    )  # no worker traceback (torchrun's own report of the exit follows)


@pytest.fixture(scope="module")
def tp2_saves(tiny) -> dict:
    """Six iterations from the TP2 conversion, saved at 3 and 6: once in torch_dist, once in the torch
    format."""
    flags = [
        *tiny["flags"],
        "--tensor-model-parallel-size",
        "2",
        "--load",
        str(tiny["ckpts"][2]),
        "--finetune",
        "--save-interval",
        "3",
    ]
    dist_save, torch_save = tiny["root"] / "tp2_dist", tiny["root"] / "tp2_torch"
    unbroken = run_pretrain(*flags, "--save", str(dist_save), "--ckpt-format", "torch_dist", nproc=2)
    legacy = run_pretrain(*flags, "--save", str(torch_save), nproc=2)
    return {"dist": dist_save, "torch": torch_save, "unbroken": unbroken, "legacy": legacy}


def test_tp2_checkpoint_loads_at_tp1_and_converts_like_the_torch_format(tiny, tp2_saves):
    """TP2 torch_dist saves: resume at TP1 (resharded on load) and mg->hf / mg->mg equal the legacy
    format's."""
    dist_save, torch_save, unbroken = tp2_saves["dist"], tp2_saves["torch"], tp2_saves["unbroken"]
    assert loss_strings(unbroken) == loss_strings(tp2_saves["legacy"])  # the format does not change training

    at3 = _only_iteration(dist_save, 3, tiny["root"] / "tp2_dist_at3")
    resumed = run_pretrain(*tiny["flags"], "--load", str(at3), nproc=1)
    assert "saved at t 2 p 1, loaded at t 1 p 1" in resumed
    # TP1 and TP2 sum partial products in another order: equal to float32 rounding, not bitwise.
    assert_close_losses(
        losses(resumed), {it: v for it, v in losses(unbroken).items() if it > 3}, label="tp2->tp1"
    )

    from safetensors.torch import load_file

    from mindspeed_llm.convert.convert import ConvertOptions, convert

    def to_hf(load, name):
        target = tiny["root"] / name
        convert(
            ConvertOptions(
                load_model_type="mg",
                save_model_type="hf",
                load_dir=str(load),
                save_dir=str(target),
                progress=False,
            )
        )
        return {k: v for f in sorted(target.glob("*.safetensors")) for k, v in load_file(f).items()}

    from_dist, from_torch = to_hf(dist_save, "hf_from_dist"), to_hf(torch_save, "hf_from_torch")
    assert from_dist.keys() == from_torch.keys()
    for key in from_torch:
        assert torch.equal(from_dist[key], from_torch[key]), key
    # The trained weights changed: the comparison is not between two copies of the start.
    start = to_hf(tiny["ckpts"][1], "hf_start")
    assert not torch.equal(start["model.norm.weight"], from_dist["model.norm.weight"])

    # mg->mg: torch_dist -> legacy at PP2, then -> HF: same tensors again.
    pp2 = tiny["root"] / "pp2_from_dist"
    convert(
        ConvertOptions(
            load_model_type="mg",
            save_model_type="mg",
            load_dir=str(dist_save),
            save_dir=str(pp2),
            target_tp=1,
            target_pp=2,
            progress=False,
        )
    )
    assert (pp2 / "iter_0000006" / "mp_rank_00_001" / "model_optim_rng.pt").is_file()
    via_pp2 = to_hf(pp2, "hf_via_pp2")
    for key in from_torch:
        assert torch.equal(via_pp2[key], from_torch[key]), key


def _header_written_before_the_record(hf, tp: int) -> argparse.Namespace:
    """``args`` as convert_ckpt.py hf -> mg wrote them before the checkpoint record existed (no record in the
    file): every field spelled out, from the HF folder. (Checked field by field against the output of that
    code, commit 53e5dc2, for this tiny model.)"""
    from mindspeed_llm.models.families import ModelConfig

    cfg = json.loads((hf / "config.json").read_text())
    rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta"))
    return argparse.Namespace(
        use_mcore_models=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        num_layer_list=None,
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        group_query_attention=True,
        num_query_groups=cfg["num_key_value_heads"],
        kv_channels=cfg["hidden_size"] // cfg["num_attention_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        position_embedding_type="rope",
        rotary_base=float(rope_theta),
        normalization="RMSNorm",
        norm_epsilon=cfg["rms_norm_eps"],
        swiglu=True,
        add_bias_linear=False,
        add_qkv_bias=True,
        qk_layernorm=False,
        untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", False),
        padded_vocab_size=cfg["vocab_size"],
        hf_vocab_size=cfg["vocab_size"],
        make_vocab_size_divisible_by=1,
        params_dtype=torch.float32,
        bf16=False,
        fp16=False,
        hf_config=ModelConfig.from_hf_config(str(hf)).to_hf_config(),
        hf_architecture=cfg["architectures"][0],
        rope_scaling_type=None,
        rope_scaling_factor=None,
        low_freq_factor=None,
        high_freq_factor=None,
        original_max_position_embeddings=None,
        hf_dir=str(hf.resolve()),
        model_type_hf=None,
        tokenizer_model=None,
    )


def test_trainer_converter_and_older_checkpoints_read_to_one_record(tiny, tp2_saves, tmp_path):
    """The record of the converter's TP2 output, of a file written before the record (args only: it still
    trains), and of the trainer's saves in both formats: the same model and layout; the trainer's progress is
    its own."""
    from mindspeed_llm.runtime.checkpoint import layout, read_record
    from mindspeed_llm.runtime.checkpoint.record import RECORD_KEY

    converted = read_record(str(tiny["ckpts"][2]))
    older = shutil.copytree(tiny["ckpts"][2], tmp_path / "older")
    for tp_rank in range(2):
        path = layout.checkpoint_file_for(older, 1, tp_rank, 0, 1)
        state = torch.load(path, weights_only=False)
        del state[RECORD_KEY], state["num_floating_point_operations_so_far"]
        state["args"] = _header_written_before_the_record(tiny["hf"], 2)
        torch.save(state, path)
    assert read_record(str(older)) == converted
    # ... and trains from it as from the converter's output: the same first loss
    older_run = run_pretrain(
        *tiny["flags"],
        "--tensor-model-parallel-size",
        "2",
        "--load",
        str(older),
        "--finetune",
        "--train-iters",
        "1",
        # one iteration leaves no room for the flags' warm-up; the first loss does not depend on it
        "--lr-warmup-iters",
        "0",
        nproc=2,
    )
    assert loss_strings(older_run) == {1: loss_strings(tp2_saves["unbroken"])[1]}

    trained = {fmt: read_record(str(tp2_saves[fmt])) for fmt in ("torch", "dist")}
    assert trained["torch"] == trained["dist"]  # the format holds the same record
    trained = trained["torch"]
    assert (trained.layout, trained.lora) == (converted.layout, None)
    for field in (
        "hf_config",
        "hf_architecture",
        "hf_vocab_size",
        "padded_vocab_size",
        "max_position_embeddings",
        "params_dtype",
    ):
        assert getattr(trained.model, field) == getattr(converted.model, field), field
    shared = set(trained.model.settings) & set(converted.model.settings)
    assert len(shared) >= 15, shared  # every setting a launch is checked against but the converter-only ones
    assert {k: trained.model.settings[k] for k in shared} == {k: converted.model.settings[k] for k in shared}
    assert (converted.progress.iteration, converted.progress.consumed_train_samples) == (1, 0)
    assert (trained.progress.iteration, trained.progress.consumed_train_samples) == (6, 24)
    assert trained.progress.floating_point_operations_so_far > 0
