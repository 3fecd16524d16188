"""--context-parallel-size 2 trains like CP 1: losses and gradient norms (fp32, relative 1e-5) at sequence
4096.

A tiny Qwen2 (2 layers, hidden 64, 4 heads, 2 K/V groups: GQA) converted from one HF model at TP1 and
TP2 and PP2, three steps at sequence 4096: the CP 1 run (flash-style SDPA attention) is the reference for
ring (megatron_cp_algo) at CP 2, for ring at CP 2 x TP 2 and for Ulysses (ulysses_cp_algo) at CP 2 x PP 2
with the distributed optimizer (sharded over the data-parallel x CP group; 4 processes each). (Ulysses at
CP 2 alone = CP 1: tests/e2e/test_context_parallel_dropout.py, losses with dropout, and its exact resume;
tests/e2e/test_long_context_rope.py with YaRN.) The
gradient norms are read from the runs' tensorboard events (the log prints three decimals). The ring run saves
at step 3 and a CP 1 launch resumes it: steps 4 and 5 equal the unbroken CP 1 run's. (Attention dropout with
CP: tests/e2e/test_context_parallel_dropout.py. hybrid_cp_algo at CP 4 (Ulysses 2 x ring 2) = CP 1: there on
plain sequences, losses with dropout, and in tests/e2e/test_context_parallel_packed.py on packed ones,
losses, gradient norms and weights; against dense attention: tests/ops/test_context_parallel.py.)
"""

from __future__ import annotations

import pytest

from tests.e2e.pretrain_helpers import (
    convert_hf_to_mg,
    grad_norms,
    losses,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    run_pretrain,
    train_flags,
)

pytestmark = pytest.mark.slow

SEQ = 4096
REL = 1e-5


def _close(got: dict[int, float], want: dict[int, float], label: str) -> None:
    assert got and set(got) <= set(want), f"{label}: steps {sorted(got)} vs {sorted(want)}"
    for step, value in got.items():
        rel = abs(value - want[step]) / abs(want[step])
        assert rel <= REL, f"{label}: step {step}: {value} vs {want[step]} (relative {rel:.2e})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (losses, grad norms)} of the CP 1 reference, the CP 2 runs and the CP 1 resume."""
    root = tmp_path_factory.mktemp("cp")
    hf = make_hf_model(root / "hf", num_layers=2)
    data = make_indexed_dataset(root / "data" / "cp_text_document", docs=500, seed=5)
    ckpt = {
        (tp, pp): convert_hf_to_mg(hf, root / f"mg_tp{tp}_pp{pp}", tp=tp, pp=pp)
        for tp, pp in ((1, 1), (2, 1), (1, 2))
    }
    base = [*model_flags(hf), "--max-position-embeddings", str(SEQ), "--use-flash-attn"]

    def run(name, tp=1, cp=1, algo="megatron_cp_algo", stop=3, extra=(), load=None, pp=1):
        board = root / f"tb_{name}"
        # One 5-step schedule for every run; the CP 2 runs stop after step 3 (--exit-interval).
        flags = [*base, *train_flags(data, iters=5, gbs=1, seq=SEQ), "--exit-interval", str(stop),
                 "--tensorboard-dir", str(board),
                 "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
                 "--context-parallel-size", str(cp),
                 "--context-parallel-algo", algo, *extra]
        flags += ["--load", str(load)] if load else ["--load", str(ckpt[tp, pp]), "--finetune"]
        out = run_pretrain(*flags, nproc=tp * pp * cp, timeout=400)
        return losses(out), grad_norms(board), out

    saved = root / "cp2_save"
    return {
        "cp1": run("cp1", stop=5),
        "ring": run("ring", cp=2, extra=("--save", str(saved), "--save-interval", "3")),
        "ring_tp2": run("ring_tp2", tp=2, cp=2),
        "ulysses_pp2_distopt": run("ulysses_pp2_distopt", pp=2, cp=2, algo="ulysses_cp_algo",
                                   extra=("--use-distributed-optimizer",)),
        "resume_cp1": run("resume_cp1", stop=5, load=saved),
    }


@pytest.mark.parametrize("name", ["ring", "ring_tp2", "ulysses_pp2_distopt"])
def test_cp_equals_cp1(runs, name):
    got_loss, got_norm, out = runs[name]
    want_loss, want_norm, _ = runs["cp1"]
    assert sorted(got_loss) == [1, 2, 3], out[-3000:]
    assert sorted(got_norm) == [1, 2, 3]
    _close(got_loss, want_loss, f"{name} loss")
    _close(got_norm, want_norm, f"{name} grad norm")
    assert " CP=2 " in out


def test_save_at_cp2_resume_at_cp1_continues_identically(runs):
    got_loss, got_norm, out = runs["resume_cp1"]
    assert sorted(got_loss) == [4, 5], out[-3000:]
    _close(got_loss, runs["cp1"][0], "resumed loss")
    _close(got_norm, runs["cp1"][1], "resumed grad norm")

