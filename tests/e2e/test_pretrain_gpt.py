"""pretrain_gpt.py end to end on CPU/gloo: parallel layouts agree, resume is exact, saves survive SIGKILL,
sequence parallelism, tied embeddings at PP2, bf16 back to HF, --tensorboard-dir, and ``--ckpt-format
torch_dist`` (Megatron-LM's layout, exact resume at DP2 with the distributed optimizer, a TP2 checkpoint
loading at TP1, convert_ckpt.py reading it like the legacy format). Tiny models converted by convert_ckpt. The
DP2 and TP2 runs that match the one-process run are also the torch_dist / legacy saves (one launch each)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from tests.e2e.pretrain_helpers import (
    PAUSED_IN_SAVE,
    PRETRAIN,
    assert_close_losses,
    convert_hf_to_mg,
    loss_strings,
    losses,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    run_pretrain,
    start_pretrain,
    train_flags,
)
from tests.helpers.launch import Started, StartedTorchrun, exit_statuses, signal_launch, wait_for_output
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import tiny_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2 HF model, its TP1/TP2/PP2 conversions, and an indexed dataset."""
    root = tmp_path_factory.mktemp("pretrain")
    hf, ckpts = tiny_checkpoints(root, [(1, 1), (2, 1), (1, 2)])
    data = make_indexed_dataset(root / "data" / "corpus_text_document")
    return {
        "root": root,
        "hf": hf,
        "ckpts": ckpts,
        "data": data,
        "flags": model_flags(hf) + train_flags(data),
    }


def _parallel(tp: int, pp: int) -> list[str]:
    return ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]


CONTRADICTING = ["--rotary-base", "10000", "--norm-epsilon", "1e-5", "--rope-scaling-type", "linear",
                 "--rope-scaling-factor", "2"]


@pytest.fixture(scope="module")
def singles(tiny) -> dict:
    """The module's independent single-process launches, started together (they share the two cores): the
    baseline, a launch contradicting the checkpoint, --use-checkpoint-args, and a --load folder that is
    missing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    model = set(tiny["flags"][:tiny["flags"].index("--tokenizer-type")])
    no_model = [f for f in tiny["flags"][tiny["flags"].index("--tokenizer-type"):]]
    assert "--num-layers" in model and "--num-layers" not in no_model
    missing = tiny["root"] / "no_such_ckpt"
    started = {
        "baseline": start_pretrain(
            *tiny["flags"], *_parallel(1, 1), "--load", str(tiny["ckpts"][1, 1]), "--finetune",
            "--tensorboard-dir", str(tiny["root"] / "baseline_tensorboard"),
        ),
        "contradicting": Started(
            [
                sys.executable,
                "-u",  # as torchrun's workers: forked from the same preloaded interpreter
                str(PRETRAIN),
                *tiny["flags"],
                *CONTRADICTING,
                "--load",
                str(tiny["ckpts"][1, 1]),
                "--finetune",
            ],
            env=env,
            timeout=180,
        ),
        "checkpoint_args": start_pretrain(
            *no_model,
            "--use-checkpoint-args",
            "--attention-dropout",
            "0",
            "--hidden-dropout",
            "0",
            "--make-vocab-size-divisible-by",
            "1",
            "--load",
            str(tiny["ckpts"][1, 1]),
            "--no-load-optim",
            "--no-load-rng",
            "--train-iters",
            "3",
            nproc=1,
        ),
        "missing_load": Started(
            [sys.executable, "-u", str(PRETRAIN), *tiny["flags"], "--load", str(missing)], env=env,
            timeout=120,
        ),
    }
    return {"missing": missing, **started}  # each test waits for its own run


@pytest.fixture(scope="module")
def baseline(singles) -> dict[int, float]:
    """Losses of iterations 1..6 on one process, TP1 PP1, from the converted weights."""
    out = singles["baseline"].result().stdout
    got = losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6], out[-3000:]
    return got


def test_tensorboard_scalars_match_the_log(tiny, baseline):
    """--tensorboard-dir (the baseline run's): the scalars written are the ones the log lines print (read back
    with tensorboard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny["root"] / "baseline_tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lm loss", "learning-rate", "grad-norm", "batch-size"} <= tags
    written = {e.step: e.value for e in events.Scalars("lm loss")}
    assert sorted(written) == sorted(baseline) == [1, 2, 3, 4, 5, 6]
    for it, value in baseline.items():
        assert abs(written[it] - value) <= 1e-6 * abs(value), (it, written[it], value)
    assert all(e.value == 4 for e in events.Scalars("batch-size"))


def _older_checkpoint(tiny) -> Path:
    """A copy of the TP2 conversion as convert_ckpt.py wrote it before the checkpoint record existed (no
    record in the files: the args header only)."""
    from mindspeed_llm.runtime.checkpoint import layout
    from mindspeed_llm.runtime.checkpoint.record import RECORD_KEY

    older = shutil.copytree(tiny["ckpts"][2, 1], tiny["root"] / "older")
    for tp_rank in range(2):
        path = layout.checkpoint_file_for(older, 1, tp_rank, 0, 1)
        state = torch.load(path, weights_only=False)
        del state[RECORD_KEY], state["num_floating_point_operations_so_far"]
        state["args"] = _header_written_before_the_record(tiny["hf"], 2)
        torch.save(state, path)
    return older


@pytest.fixture(scope="module")
def tp2_saves(tiny) -> dict:
    """Six iterations at TP2, saved at 3 and 6: once in torch_dist from the converter's TP2 output, once in
    the torch format from the same weights in a file written before the checkpoint record (the args header
    only: :func:`_older_checkpoint`), so that one launch also shows such a file trains as the converter's
    output does."""
    flags = [*tiny["flags"], "--tensor-model-parallel-size", "2", "--finetune", "--save-interval", "3"]
    dist_save, torch_save = tiny["root"] / "tp2_dist", tiny["root"] / "tp2_torch"
    older = _older_checkpoint(tiny)
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][2, 1]), "--save", str(dist_save),
                            "--ckpt-format", "torch_dist", nproc=2)
    legacy = run_pretrain(*flags, "--load", str(older), "--save", str(torch_save), nproc=2)
    return {"dist": dist_save, "torch": torch_save, "unbroken": unbroken, "legacy": legacy, "older": older}


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_tp2_and_pp2_match_one_process(tiny, baseline, layout, request):
    if layout == "tp2":  # the TP2 run that saves in the torch format
        out = request.getfixturevalue("tp2_saves")["legacy"]
    else:
        out = run_pretrain(*tiny["flags"], *_parallel(1, 2), "--load", str(tiny["ckpts"][1, 2]), "--finetune",
                           nproc=2)
    assert_close_losses(losses(out), baseline, label=layout)


DP2_DISTRIBUTED_OPTIMIZER = ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather"]


def _only_iteration(save, iteration: int, target):
    """A copy of ``save`` holding only ``iteration`` (as if the run had stopped there)."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(save / name, target / name)
    (target / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return target


def test_dp2_distributed_optimizer_matches_and_resumes_exactly_from_megatron_layout(tiny, baseline):
    """DP2 (distributed optimizer, overlapped communication) equals TP1; saved with --ckpt-format torch_dist:
    Megatron-LM's files, read by megatron-core's own readers; resuming at 3 repeats 4..6 bit for bit. (The
    legacy format's distributed-optimizer files: test_resume_with_dropout_repeats_the_unbroken_run_bitwise's
    DP2 run.)"""
    save = tiny["root"] / "dp2_save"
    flags = [*tiny["flags"], *_parallel(1, 1), *DP2_DISTRIBUTED_OPTIMIZER, "--ckpt-format", "torch_dist"]
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][1, 1]), "--finetune", "--save", str(save),
                            "--save-interval", "3", nproc=2)
    assert_close_losses(losses(unbroken), baseline, label="dp2")
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
    assert "training ... iterations 4 to 6" in resumed
    assert loss_strings(resumed) == {it: s for it, s in loss_strings(unbroken).items() if it > 3}

    # The distributed optimizer's state reshards only over DP: TP2 refuses it with one line, before training.
    proc = StartedTorchrun(PRETRAIN, *flags, "--tensor-model-parallel-size", "2", "--load",
                           tiny["root"] / "dp2_at3", nproc=2).result(check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "--no-load-optim" in errors[0] and "TP=1 PP=1" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr  # no worker traceback


DROPOUT = [
    "--attention-dropout",
    "0.1",
    "--hidden-dropout",
    "0.1",
]  # Megatron-LM's defaults (later flags win)


@pytest.mark.parametrize("layout", ["tp2", "dp2-distributed-optimizer"])
def test_resume_with_dropout_repeats_the_unbroken_run_bitwise(tiny, baseline, tmp_path, layout):
    """Dropout 0.1: save at 3, resume from it (--ckpt-step 3 of a folder whose tracker says 6), same losses
    4..6. DP2 with the distributed optimizer and overlapped communication, as
    test_dp2_distributed_optimizer_matches_and_resumes_exactly_from_megatron_layout trains it, in the legacy
    format (its files: distrib_optim.pt). PP2 with dropout resumes exactly in
    test_virtual_pipeline_saves_model_chunks_and_resumes_exactly (PP2 x 2 virtual stages, dropout 0.1)."""
    tp, pp, extra = {"tp2": (2, 1, []),
                     "dp2-distributed-optimizer": (1, 1, DP2_DISTRIBUTED_OPTIMIZER)}[layout]
    flags = [*tiny["flags"], *DROPOUT, *_parallel(tp, pp), *extra]
    save = tmp_path / "save"
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][tp, pp]), "--finetune", "--save", str(save),
                            "--save-interval", "3", nproc=2)
    assert max(abs(losses(unbroken)[it] - baseline[it]) for it in baseline) > 1e-3, (
        "dropout should change the losses"
    )
    if extra:
        assert (save / "iter_0000003" / "mp_rank_00" / "distrib_optim.pt").is_file()
        assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    resumed = run_pretrain(*flags, "--load", str(save), "--ckpt-step", "3", nproc=2)
    assert "iterations 4 to 6" in resumed
    assert loss_strings(resumed) == {it: s for it, s in loss_strings(unbroken).items() if it > 3}


def test_launch_contradicting_the_checkpoint_is_refused_before_training(singles):
    """The converted Qwen2 has rope_theta 1e6 and eps 1e-6: other values (or a scaling) are one error line,
    exit 1."""
    proc = singles["contradicting"].result()
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for part in ("--rotary-base 10000.0 (checkpoint: 1000000.0)", "--norm-epsilon 1e-05 (checkpoint: 1e-06)",
                 "--rope-scaling-type linear (checkpoint: None)"):
        assert part in errors[0]
    assert "Traceback" not in proc.stderr and "iteration" not in proc.stdout.replace("(iteration 1)", "")


def test_use_checkpoint_args_and_resuming_a_converted_checkpoint_skip_its_samples(singles):
    """No model flags but --use-checkpoint-args; iteration 1 without --finetune counts 1 x GBS as consumed."""
    out = singles["checkpoint_args"].result().stdout
    assert "iterations 2 to 3" in out
    assert re.search(r"iteration\s+2/\s+3 \| consumed samples:\s+8 \|", out), out[-2000:]
    assert sorted(losses(out)) == [2, 3]


def test_sequence_parallel_tp2_matches_tp1_and_norms_stay_identical(tiny, baseline):
    save = tiny["root"] / "sp_save"
    out = run_pretrain(
        *tiny["flags"],
        *_parallel(2, 1),
        "--sequence-parallel",
        "--load",
        str(tiny["ckpts"][2, 1]),
        "--finetune",
        "--save",
        str(save),
        nproc=2,
    )
    assert_close_losses(losses(out), baseline, label="tp2 + sequence parallel")
    ranks = [
        torch.load(save / "iter_0000006" / f"mp_rank_0{r}" / "model_optim_rng.pt", weights_only=False)[
            "model"
        ]
        for r in (0, 1)
    ]
    start = torch.load(tiny["ckpts"][2, 1] / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)["model"]
    norms = [k for k in ranks[0] if k.endswith("layernorm.weight")]
    assert len(norms) == 2 * 4 + 1
    for key in norms:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert not torch.equal(ranks[0][key], start[key]), f"{key} did not train"


def test_tied_embeddings_train_at_pp2_like_pp1(tmp_path):
    hf = make_hf_model(tmp_path / "hf_tied", kind="qwen2_tied")
    data = make_indexed_dataset(tmp_path / "data" / "tied_text_document", seed=1)
    flags = model_flags(hf) + train_flags(data)
    assert "--untie-embeddings-and-output-weights" not in flags
    one_run = start_pretrain(*flags, "--load", str(convert_hf_to_mg(hf, tmp_path / "pp1")), "--finetune")
    two = run_pretrain(*flags, *_parallel(1, 2), "--load", str(convert_hf_to_mg(hf, tmp_path / "pp2", 1, 2)),
                       "--finetune", nproc=2)
    one = one_run.result().stdout
    assert len(losses(one)) == 6
    assert_close_losses(losses(two), losses(one), label="tied pp2")


def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tiny, tmp_path):
    """The save of iteration 4 is held before it publishes (a test script); SIGKILL there; iteration 2 still
    loads and resumes."""
    save = tmp_path / "ckpt"
    flags = [*tiny["flags"], "--load", str(save), "--save", str(save), "--save-interval", "2"]
    run = StartedTorchrun(PAUSED_IN_SAVE, "4", *flags, nproc=1)  # torchrun's one worker
    try:
        wait_for_output(run, "paused in checkpoint save at iteration 4")
        signal_launch(run, signal.SIGKILL)
    finally:
        codes = exit_statuses(run, timeout=60)
    assert codes == [-signal.SIGKILL]
    done = run.result(check=False)
    lines = done.stdout + done.stderr
    killed = loss_strings(lines)
    assert "no checkpoint in" in lines  # first start with --load == --save: fresh, and says so
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert list((save / "iter_0000004").rglob("*.tmp")), "the kill should land after the new files were begun"

    # Resume from iteration 2 (the same auto-resume command); --exit-interval 4 saves and exits 0.
    out = run_pretrain(*flags, "--exit-interval", "4")
    assert "training ... iterations 3 to 6" in out
    # It holds the --save lock, so the killed save's .tmp files are debris it may remove.
    assert "temporary file(s) an interrupted save left in" in out
    assert {it: s for it, s in loss_strings(out).items()} == {3: killed[3], 4: killed[4]}
    assert "exiting program at iteration 4" in out
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_bf16_loss_falls_and_checkpoint_converts_back_to_hf(tmp_path):
    """bf16 (fp32 main params, fp32 grad reduce) with the HF tokenizer; the trained checkpoint -> HF ->
    transformers."""
    # Fewer tokenizer entries than embedding rows, as real Qwen2.5 folders have (151665 vs 152064).
    hf = make_hf_model(tmp_path / "hf", dtype=torch.bfloat16, tokenizer_tokens=120)
    mg = convert_hf_to_mg(hf, tmp_path / "mg")
    data = make_indexed_dataset(tmp_path / "data" / "small_text_document", seed=2, learnable=True)
    flags = model_flags(hf) + train_flags(data, iters=12, lr=1e-2, mbs=4, gbs=8)
    tok = flags.index("--tokenizer-type")
    flags[tok:tok + 4] = ["--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", str(hf)]
    flags += ["--split", "90,10,0", "--eval-interval", "6", "--eval-iters", "1"]  # later flags win
    save = tmp_path / "trained"
    out = run_pretrain(
        *flags, "--bf16", "--load", str(mg), "--finetune", "--save", str(save), "--log-throughput"
    )
    assert "| throughput (tokens/s/device): " in out and "| TFLOP/s/device: " in out
    assert "[Rank 0] (after 1 iterations) memory (MB) | rss: " in out
    assert "validation loss at iteration 6 | lm loss value: " in out and "lm loss PPL: " in out
    got = losses(out)
    assert len(got) == 12
    first, last = sum(got[i] for i in (1, 2, 3)) / 3, sum(got[i] for i in (10, 11, 12)) / 3
    assert last < first - 0.3, f"loss did not fall: {got}"

    state = torch.load(save / "iter_0000012" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert state["model"]["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    assert state["optimizer"]["fp32_from_fp16_params"][0][0].dtype == torch.float32

    from transformers import AutoModelForCausalLM

    from mindspeed_llm.convert.convert import ConvertOptions, convert

    target = tmp_path / "back_to_hf"
    convert(
        ConvertOptions(
            load_model_type="mg",
            save_model_type="hf",
            load_dir=str(save),
            save_dir=str(target),
            hf_dir=str(hf),
            progress=False,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    trained = state["model"]["decoder.final_layernorm.weight"].float()
    torch.testing.assert_close(model.model.norm.weight.detach(), trained)
    ids = torch.randint(3, 120, (1, 16))
    assert torch.isfinite(model(ids, labels=ids).loss)


def test_cli_error_for_missing_load_folder_is_one_clear_line(singles):
    missing, proc = singles["missing"], singles["missing_load"].result()
    assert proc.returncode == 1
    assert f"error: --load {missing}: the folder does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_virtual_pipeline_saves_model_chunks_and_resumes_exactly(tiny, tmp_path):
    """PP2 x 2 virtual stages, dropout 0.1, random weights: model0/model1 in the files; resuming at 3 repeats
    4..6."""
    save = tmp_path / "vpp"
    flags = [*tiny["flags"], *DROPOUT, *_parallel(1, 2), "--num-layers-per-virtual-pipeline-stage", "1"]
    unbroken = run_pretrain(*flags, "--save", str(save), "--save-interval", "3", nproc=2)
    state = torch.load(save / "iter_0000003" / "mp_rank_00_001" / "model_optim_rng.pt", weights_only=False)
    assert {"model0", "model1"} <= set(state) and "model" not in state
    at3 = tmp_path / "vpp_at3"
    shutil.copytree(save / "iter_0000003", at3 / "iter_0000003")
    (at3 / "latest_checkpointed_iteration.txt").write_text("3")
    resumed = run_pretrain(*flags, "--load", str(at3), nproc=2)
    assert loss_strings(resumed) == {it: s for it, s in loss_strings(unbroken).items() if it > 3}


# ---- --ckpt-format torch_dist at TP2 ---------------------------------------------------------------------
def test_tp2_checkpoint_loads_at_tp1_and_converts_like_the_torch_format(tiny, tp2_saves):
    """TP2 torch_dist saves: resume at TP1 (resharded on load) and mg->hf / mg->mg equal the legacy
    format's."""
    dist_save, torch_save, unbroken = tp2_saves["dist"], tp2_saves["torch"], tp2_saves["unbroken"]
    # the format does not change training (nor does the older file the legacy run started from)
    assert loss_strings(unbroken) == loss_strings(tp2_saves["legacy"])

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
    start = to_hf(tiny["ckpts"][1, 1], "hf_start")
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


def test_trainer_converter_and_older_checkpoints_read_to_one_record(tiny, tp2_saves):
    """The record of the converter's TP2 output, of a file written before the record (args only: it still
    trains), and of the trainer's saves in both formats: the same model and layout; the trainer's progress is
    its own."""
    from mindspeed_llm.runtime.checkpoint import read_record

    converted = read_record(str(tiny["ckpts"][2, 1]))
    assert read_record(str(tp2_saves["older"])) == converted
    # ... and trains from it as from the converter's output: tp2_saves' torch-format run started from it, its
    # six losses are the torch_dist run's (from the converter's output) bit for bit
    older_run = loss_strings(tp2_saves["legacy"])
    assert sorted(older_run) == [1, 2, 3, 4, 5, 6] and older_run == loss_strings(tp2_saves["unbroken"])

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
