"""Context parallelism with packed samples: posttrain_gpt.py --stage sft --reset-attention-mask at CP 2 and 4
= CP 1.

A tiny Qwen2 (2 layers, hidden 64, 4 heads, 2 K/V groups: GQA) converted from one HF model fine-tunes three
SGD steps (momentum: the weights move by the learning rate times a sum of the steps' gradients; Adam would
turn rounding noise in gradients that are zero in exact arithmetic, such as the key bias's, into full-size
updates) on neat-packed instruction data (``PREFIX_packed_attention_mask_document`` numbers the samples of
each pack, as ``preprocess_data.py --pack --neat-pack`` writes them) at sequence 256, two packs per
micro-batch, with --reset-attention-mask: CP 1 (document attention on the whole sequence) is the reference for
ring (megatron_cp_algo) and Ulysses (ulysses_cp_algo) at CP 2, both with --attention-dropout 0.1 (megatron's
default; CP 1 with the same dropout: the masks are keyed by batch row, head and position in the whole sample,
the seed drawn from megatron's RNG tracker), and hybrid_cp_algo at CP 4 (Ulysses 2 x ring 2) without dropout.
The packs hold several samples per chunk (CP 2: chunks of 64 tokens, CP 4: of 32), samples that cross
chunks and CP ranks, samples of one and two tokens, and sample boundaries exactly at chunk boundaries
(32, 64, 128, 192). Compared (fp32, relative 1e-5): the loss of each step, the gradient norm of each step
(tensorboard) and, per tensor, how far the third step moved the weights (norm of the difference over norm of
CP 1's move). A CP 1 step without --reset-attention-mask gives
another loss: the documents matter to these losses; CP 1 without dropout gives another loss than with it. CP 1
with dropout resumes its step-2 checkpoint and repeats step 3 bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, StartedTorchrun
from tests.e2e.pretrain_helpers import (
    VOCAB,
    assert_close_losses,
    convert_hf_to_mg,
    grad_norms,
    loss_strings,
    losses,
    make_hf_model,
    model_flags,
    write_instruction_data,
)

pytestmark = pytest.mark.slow

POSTTRAIN = REPO_ROOT / "posttrain_gpt.py"
SEQ = 256
REL = 1e-5
DROPOUT = ("--attention-dropout", "0.1")
# (prompt, answer) lengths of the samples of each pack; a pack shorter than SEQ is padded (one more document).
PACKS = [
    [(20, 44), (10, 30), (4, 20), (30, 70), (8, 20)],  # boundaries 64, 104, 128, 228
    [(4, 6), (30, 60), (2, 1), (1, 0), (40, 80), (10, 10)],  # 1- and 2-token samples; 244 tokens + padding
    [(50, 150), (16, 40)],  # a 200-token sample across CP 4's ranks 0-3 and CP 2's ranks 0 -> 1
    [(11, 20), (13, 20), (32, 32), (24, 40), (20, 30)],  # boundaries 31, 64, 128, 192; 242 tokens + padding
]


def _packs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows (ids, sample numbers 1, 2, ... with padding 0, labels -100 on prompts and padding) of the
    packs."""
    rng = np.random.default_rng(seed)
    rows = []
    for pack in PACKS:
        ids, mask, labels = [], [], []
        for number, (prompt, answer) in enumerate(pack, start=1):
            sample = rng.integers(3, VOCAB - 1, prompt + answer)
            ids.append(sample)
            mask.append(np.full(sample.size, number))
            labels.append(np.concatenate([np.full(prompt, -100), sample[prompt:]]))
        pad = SEQ - sum(x.size for x in ids)
        rows.append(
            (
                np.concatenate([*ids, np.full(pad, VOCAB - 1)]),
                np.concatenate([*mask, np.zeros(pad, int)]),
                np.concatenate([*labels, np.full(pad, -100)]),
            )
        )
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (losses, grad norms, weights after step 3, stdout)} of the CP 1 reference and the CP runs."""
    root = tmp_path_factory.mktemp("cp_packed")
    hf = make_hf_model(root / "hf", num_layers=2, initializer_range=0.2)
    data = write_instruction_data(root / "data" / "packed", _packs())
    ckpt = convert_hf_to_mg(hf, root / "mg")
    base = [
        *model_flags(hf),
        *[
            str(f)
            for f in [
                "--stage",
                "sft",
                "--prompt-type",
                "qwen",
                "--tokenizer-type",
                "NullTokenizer",
                "--vocab-size",
                VOCAB - 1,
                "--data-path",
                data,
                "--split",
                "100,0,0",
                "--seq-length",
                SEQ,
                "--max-position-embeddings",
                SEQ,
                "--micro-batch-size",
                2,
                "--global-batch-size",
                4,
                "--train-iters",
                3,
                "--optimizer",
                "sgd",
                "--lr",
                0.5,
                "--min-lr",
                0.05,
                "--lr-warmup-iters",
                0,
                "--weight-decay",
                0.1,
                "--clip-grad",
                1.0,
                "--seed",
                1234,
                "--log-interval",
                1,
                "--eval-iters",
                0,
                "--num-workers",
                0,
                "--use-flash-attn",
            ]
        ],
    ]

    def start(name, cp=1, algo="megatron_cp_algo", *extra, save_interval=3, load=None):
        flags = [*base, "--context-parallel-size", str(cp), "--context-parallel-algo", algo,
                 "--tensorboard-dir", str(root / f"tb_{name}"), *extra]
        flags += ["--finetune", "--load", str(ckpt)] if load is None else ["--load", str(load)]
        if "--reset-attention-mask" in extra:  # the weights after step 3
            flags += ["--save", str(root / f"save_{name}"), "--save-interval", str(save_interval)]
        return StartedTorchrun(POSTTRAIN, *flags, nproc=cp, timeout=300)

    started = {
        "cp1_dropout": start(
            "cp1_dropout", 1, "megatron_cp_algo", "--reset-attention-mask", *DROPOUT, save_interval=1
        ),
        "cp1": start("cp1", 1, "megatron_cp_algo", "--reset-attention-mask"),
        "ring": start("ring", 2, "megatron_cp_algo", "--reset-attention-mask", *DROPOUT),
        "ulysses": start("ulysses", 2, "ulysses_cp_algo", "--reset-attention-mask", *DROPOUT),
        "hybrid_cp4": start(
            "hybrid_cp4", 4, "hybrid_cp_algo", "--ulysses-degree-in-cp", "2", "--reset-attention-mask"
        ),
        "cp1_unpacked_attention": start(
            "cp1_unpacked_attention", 1, "megatron_cp_algo", "--exit-interval", "1"
        ),
    }
    out = {
        "start": torch.load(ckpt / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)[
            "model"
        ]
    }
    pending = list(started.items())
    while pending:
        name, run = pending.pop(0)
        stdout = run.result().stdout
        if name == "cp1_dropout":  # its step-2 checkpoint resumed (it overlaps the CP runs still going)
            pending.append(("cp1_dropout_resume", start("cp1_dropout_resume", 1, "megatron_cp_algo", *DROPOUT,
                                                        "--reset-attention-mask", "--ckpt-step", "2",
                                                        load=root / "save_cp1_dropout")))
        weights = None
        if name not in ("cp1_unpacked_attention", "cp1_dropout_resume"):
            saved = root / f"save_{name}" / "iter_0000003" / "mp_rank_00" / "model_optim_rng.pt"
            weights = torch.load(saved, weights_only=False)["model"]
        out[name] = (losses(stdout), grad_norms(root / f"tb_{name}"), weights, stdout)
    return out


def _close(got: dict[int, float], want: dict[int, float], label: str) -> None:
    assert sorted(got) == [1, 2, 3], f"{label}: steps {sorted(got)}"
    assert_close_losses(got, want, rel=REL, label=label)


@pytest.mark.parametrize("name", ["ring", "ulysses", "hybrid_cp4"])
def test_packed_sft_at_cp_equals_cp1(runs, name):
    # ring and Ulysses with attention dropout 0.1 against CP 1 with it; hybrid without dropout.
    got_loss, got_norm, got_weights, out = runs[name]
    want_loss, want_norm, want_weights, _ = runs["cp1" if name == "hybrid_cp4" else "cp1_dropout"]
    assert f" CP={4 if name == 'hybrid_cp4' else 2} " in out, out[-3000:]
    _close(got_loss, want_loss, f"{name} loss")
    _close(got_norm, want_norm, f"{name} grad norm")
    compared = 0
    for key, start in runs["start"].items():
        if isinstance(start, torch.Tensor) and not key.endswith("_extra_state"):
            moved = (want_weights[key] - start).norm()
            assert moved > 1e-3, f"{key}: CP 1 moved it by {moved:.2e} only"
            rel = float((got_weights[key] - want_weights[key]).norm() / moved)
            assert rel <= REL, f"{name}: {key} moved differently from CP 1 (relative {rel:.2e})"
            compared += 1
    assert compared > 10


def test_documents_change_the_loss(runs):
    # Without --reset-attention-mask the samples of a pack attend to each other: another loss.
    packed, plain = runs["cp1"][0][1], runs["cp1_unpacked_attention"][0][1]
    assert abs(packed - plain) / packed > 1e-3, (packed, plain)


def test_attention_dropout_changes_the_packed_loss(runs):
    # The ring / Ulysses comparisons above are with dropout that matters: CP 1 without it gives other losses.
    dropped, plain = runs["cp1_dropout"][0], runs["cp1"][0]
    assert max(abs(dropped[i] - plain[i]) / plain[i] for i in (1, 2, 3)) > 1e-3, (dropped, plain)


def test_packed_dropout_resume_at_cp1_is_exact(runs):
    # Resuming CP 1's step-2 checkpoint (the RNG tracker restored) repeats step 3 bitwise, dropout on.
    resumed, unbroken = loss_strings(runs["cp1_dropout_resume"][3]), loss_strings(runs["cp1_dropout"][3])
    assert sorted(resumed) == [3], runs["cp1_dropout_resume"][3][-3000:]
    assert resumed[3] == unbroken[3]
