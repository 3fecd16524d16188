"""pretrain_gpt.py end to end on CPU/gloo: parallel layouts agree, resume is exact, saves survive SIGKILL,
sequence parallelism, tied embeddings at PP2, bf16 back to HF. Tiny models converted by convert_ckpt."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import psutil
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
from tests.helpers.launch import Started, torchrun_command
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
            *tiny["flags"], *_parallel(1, 1), "--load", str(tiny["ckpts"][1, 1]), "--finetune"
        ),
        "contradicting": Started(
            [
                sys.executable,
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
            [sys.executable, str(PRETRAIN), *tiny["flags"], "--load", str(missing)], env=env, timeout=120
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


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_tp2_and_pp2_match_one_process(tiny, baseline, layout):
    tp, pp = (2, 1) if layout == "tp2" else (1, 2)
    out = run_pretrain(
        *tiny["flags"], *_parallel(tp, pp), "--load", str(tiny["ckpts"][tp, pp]), "--finetune", nproc=2
    )
    assert_close_losses(losses(out), baseline, label=layout)


def test_dp2_distributed_optimizer_matches_and_resumes_exactly(tiny, baseline):
    """DP2 (distributed optimizer, overlapped communication) equals TP1; resuming at 3 repeats 4..6
    exactly."""
    save = tiny["root"] / "dp2_save"
    flags = [*tiny["flags"], *_parallel(1, 1), "--use-distributed-optimizer", "--overlap-grad-reduce",
             "--overlap-param-gather"]
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][1, 1]), "--finetune", "--save", str(save),
                            "--save-interval", "3", nproc=2)
    assert_close_losses(losses(unbroken), baseline, label="dp2")
    assert (save / "iter_0000003" / "mp_rank_00" / "distrib_optim.pt").is_file()
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "6"

    at3 = tiny["root"] / "dp2_at3"
    shutil.copytree(save / "iter_0000003", at3 / "iter_0000003")
    (at3 / "latest_checkpointed_iteration.txt").write_text("3")
    resumed = run_pretrain(*flags, "--load", str(at3), nproc=2)
    assert "training ... iterations 4 to 6" in resumed
    want = {it: s for it, s in loss_strings(unbroken).items() if it > 3}
    assert loss_strings(resumed) == want


DROPOUT = [
    "--attention-dropout",
    "0.1",
    "--hidden-dropout",
    "0.1",
]  # Megatron-LM's defaults (later flags win)


@pytest.mark.parametrize("layout", ["tp1pp2", "tp2", "dp2-distributed-optimizer"])
def test_resume_with_dropout_repeats_the_unbroken_run_bitwise(tiny, baseline, tmp_path, layout):
    """Dropout 0.1: save at 3, resume from it (--ckpt-step 3 of a folder whose tracker says 6), same losses
    4..6."""
    tp, pp, extra = {"tp1pp2": (1, 2, []), "tp2": (2, 1, []),
                     "dp2-distributed-optimizer": (1, 1, ["--use-distributed-optimizer"])}[layout]
    flags = [*tiny["flags"], *DROPOUT, *_parallel(tp, pp), *extra]
    save = tmp_path / "save"
    unbroken = run_pretrain(*flags, "--load", str(tiny["ckpts"][tp, pp]), "--finetune", "--save", str(save),
                            "--save-interval", "3", nproc=2)
    assert max(abs(losses(unbroken)[it] - baseline[it]) for it in baseline) > 1e-3, (
        "dropout should change the losses"
    )
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = torchrun_command(PAUSED_IN_SAVE, "4", *flags, nproc=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=REPO_ROOT, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "paused in checkpoint save at iteration 4" in line:
                break
        else:
            pytest.fail("the run ended without pausing in the save:\n" + "".join(lines[-40:]))
        # torchrun starts its workers in their own sessions: kill the agent and every descendant.
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for process in tree:
            process.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed = loss_strings("".join(lines))
    assert "no checkpoint in" in "".join(lines)  # first start with --load == --save: fresh, and says so
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
