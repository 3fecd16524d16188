"""--attention-dropout with ring attention (megatron_cp_algo): the same training as CP 1 and an exact resume;
Ulysses at CP 2 and hybrid at CP 4 (Ulysses 2 x ring 2) train like CP 1 with dropout too.

A tiny Qwen2 (2 layers, hidden 64, GQA) converted from one HF model trains 6 steps at sequence 256 (a
learnable corpus) with attention dropout 0.3: at CP 1 (flash-style attention: the blockwise kernel with
dropout) and with the ring at CP 2, saving at steps 3 and 6. The dropout mask is a hash of global positions
and the seed comes from megatron's model-parallel RNG tracker, so CP 2 drops what CP 1 drops: the losses agree
(fp32, relative 1e-5). A CP 2 launch resumes the step-3 checkpoint (its RNG state restores the tracker) and
repeats steps 4-6 exactly. A one-step CP 1 run without dropout shows that the dropout runs changed the loss.
Ulysses and hybrid key the mask by the global head index as well, so their steps equal CP 1's (relative 1e-5);
Ulysses resumes its step-3 checkpoint exactly too.
"""

from __future__ import annotations

import math

import pytest

from tests.e2e.pretrain_helpers import (
    assert_close_losses,
    convert_hf_to_mg,
    loss_strings,
    losses,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    start_pretrain,
    train_flags,
)

pytestmark = pytest.mark.slow

SEQ = 256
DROPOUT = "0.3"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: stdout} of the CP 1 / CP 2 dropout runs, the CP 2 resume and a CP 1 step without dropout."""
    root = tmp_path_factory.mktemp("cp_dropout")
    hf = make_hf_model(root / "hf", num_layers=2)
    data = make_indexed_dataset(root / "data" / "text_document", docs=200, seed=3, learnable=True)
    ckpt = convert_hf_to_mg(hf, root / "mg")
    base = [*model_flags(hf), "--max-position-embeddings", str(SEQ), "--use-flash-attn",
            *train_flags(data, iters=6, gbs=2, seq=SEQ)]
    base[base.index("--attention-dropout") + 1] = DROPOUT  # model_flags says 0.0
    saved = root / "cp2_save"
    saved_ulysses = root / "ulysses_cp2_save"
    ulysses = ("--context-parallel-algo", "ulysses_cp_algo")

    def flags(cp, *extra, load=ckpt):
        more = ["--load", str(load)] + (["--finetune"] if load == ckpt else [])
        return [
            *base,
            "--context-parallel-size",
            str(cp),
            "--context-parallel-algo",
            "megatron_cp_algo",
            *more,
            *extra,
        ]

    started = {
        "cp1": start_pretrain(*flags(1)),
        "cp2": start_pretrain(*flags(2, "--save", str(saved), "--save-interval", "3"), nproc=2),
        "cp1_no_dropout": start_pretrain(*flags(1, "--exit-interval", "1", "--attention-dropout", "0")),
        "ulysses_cp2": start_pretrain(
            *flags(2, *ulysses, "--save", str(saved_ulysses), "--save-interval", "3"), nproc=2
        ),
        "hybrid_cp4": start_pretrain(
            *flags(
                4,
                "--context-parallel-algo",
                "hybrid_cp_algo",
                "--ulysses-degree-in-cp",
                "2",
                "--exit-interval",
                "3",
            ),
            nproc=4,
        ),
    }
    out = {name: run.result().stdout for name, run in started.items()}
    resumed = {
        "resume": start_pretrain(*flags(2, "--ckpt-step", "3", load=saved), nproc=2),
        "ulysses_resume": start_pretrain(
            *flags(2, *ulysses, "--ckpt-step", "3", load=saved_ulysses), nproc=2
        ),
    }
    out.update({name: run.result().stdout for name, run in resumed.items()})
    return out


def test_ring_dropout_trains_like_cp1_with_a_falling_loss(runs):
    cp1, cp2 = losses(runs["cp1"]), losses(runs["cp2"])
    assert sorted(cp2) == list(range(1, 7)), runs["cp2"][-3000:]
    assert all(math.isfinite(x) for x in cp2.values())
    assert cp2[6] < cp2[1] - 0.1, cp2
    assert_close_losses(cp2, cp1, rel=1e-5, label="CP 2 ring vs CP 1, dropout 0.3")
    # Near-uniform logits at step 1 make attention matter little; the difference is still twice the parity
    # tolerance.
    plain = losses(runs["cp1_no_dropout"])[1]
    assert abs(cp1[1] - plain) / plain > 2e-5, f"dropout did not change the loss: {cp1[1]} vs {plain}"


def test_ring_dropout_resume_at_cp2_is_exact(runs):
    resumed, unbroken = loss_strings(runs["resume"]), loss_strings(runs["cp2"])
    assert sorted(resumed) == [4, 5, 6], runs["resume"][-3000:]
    assert resumed == {step: unbroken[step] for step in (4, 5, 6)}


@pytest.mark.parametrize("name", ["ulysses_cp2", "hybrid_cp4"])
def test_ulysses_and_hybrid_dropout_train_like_cp1(runs, name):
    got = losses(runs[name])
    cp1 = losses(runs["cp1"])
    assert sorted(got) == sorted(cp1)[:len(got)] and len(got) >= 3, runs[name][-3000:]
    assert_close_losses(
        got, {step: cp1[step] for step in got}, rel=1e-5, label=f"{name} vs CP 1, dropout 0.3"
    )


def test_ulysses_dropout_resume_at_cp2_is_exact(runs):
    resumed, unbroken = loss_strings(runs["ulysses_resume"]), loss_strings(runs["ulysses_cp2"])
    assert sorted(resumed) == [4, 5, 6], runs["ulysses_resume"][-3000:]
    assert resumed == {step: unbroken[step] for step in (4, 5, 6)}
