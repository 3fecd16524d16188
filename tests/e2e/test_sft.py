"""posttrain_gpt.py --stage sft on instruction data, checked against transformers.

One tiny Qwen2 model (converted once per layout) and one instruction dataset, written here with
megatron-core's builder as preprocess_data.py writes it (three int32 datasets; labels -100 on the
prompt). The dataset holds exactly one global batch, so the first step's loss is the token-weighted
loss of all its samples, whatever their order: transformers' loss (per sample, unpadded, summed over
the learned tokens and divided by their count) is the reference, fp32, relative 1e-5, at TP1, TP2
and PP2, padded to --seq-length and with --no-pad-to-seq-lengths (variable micro-batch shapes through
TP broadcast and pipeline p2p). One sample is longer than --seq-length: its first tokens are trained on.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, torchrun
from tests.e2e.pretrain_helpers import (
    VOCAB,
    convert_hf_to_mg,
    losses,
    make_hf_model,
    model_flags,
    write_instruction_data,
)

pytestmark = pytest.mark.slow

POSTTRAIN = REPO_ROOT / "posttrain_gpt.py"
SEQ = 64
LENGTHS = [(9, 30), (20, 17), (5, 8), (30, SEQ + 10 - 30)]  # (prompt, answer) tokens; the last is cut to SEQ
REL = 1e-5
LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}


def _samples(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) per sample: ids 3..VOCAB-1, labels -100 on the prompt, the ids on the answer."""
    rng = np.random.default_rng(seed)
    out = []
    for prompt, answer in LENGTHS:
        ids = rng.integers(3, VOCAB, prompt + answer)
        labels = np.concatenate([np.full(prompt, -100), ids[prompt:]])
        out.append((ids, labels))
    return out


def hf_token_loss(hf_dir, samples, cut: int = SEQ) -> tuple[float, float]:
    """transformers' summed loss over the learned tokens of every sample (first ``cut`` tokens), and their
    count."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in samples:
            ids, labels = torch.tensor(ids[:cut])[None], torch.tensor(labels[:cut])[None]
            logits = model(ids).logits[0, :-1].double()
            target = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(
                logits, target, ignore_index=-100, reduction="sum"
            ).item()
            count += int((target != -100).sum())
    return total, count


def sft_flags(hf_dir, data: str, *, lr: float = 0.0, gbs: int = len(LENGTHS), mbs: int = 2) -> list[str]:
    return [
        *model_flags(hf_dir),
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
                "--micro-batch-size",
                mbs,
                "--global-batch-size",
                gbs,
                "--train-iters",
                1,
                "--lr",
                lr,
                "--min-lr",
                lr,
                "--lr-warmup-iters",
                0,
                "--weight-decay",
                0.0,
                "--clip-grad",
                0.0,
                "--seed",
                1234,
                "--log-interval",
                1,
                "--eval-iters",
                0,
                "--num-workers",
                0,
                "--finetune",
            ]
        ],
    ]


def run_posttrain(*flags: str, nproc: int = 1) -> str:
    return torchrun(POSTTRAIN, *flags, nproc=nproc, timeout=240).stdout


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    hf = make_hf_model(root / "hf", kind="qwen2", initializer_range=0.2)
    samples = _samples()
    data = write_instruction_data(root / "data" / "alpaca", [(i, np.ones_like(i), lab) for i, lab in samples])
    ckpts = {
        lay: convert_hf_to_mg(hf, root / f"mg_{lay}", tp, pp) for lay, (tp, pp) in LAYOUTS.items()
    }  # one each
    total, count = hf_token_loss(hf, samples)
    return {"root": root, "hf": hf, "samples": samples, "data": data, "ckpts": ckpts, "ref": total / count}


# TP1 (padded to --seq-length) is the unpacked run of the packed test below (its loss is taken before the
# step).
@pytest.mark.parametrize(
    "layout, extra", [("tp2", ("--no-pad-to-seq-lengths",)), ("pp2", ("--no-pad-to-seq-lengths",))]
)
def test_first_step_loss_equals_transformers(sft, layout, extra):
    tp, pp = LAYOUTS[layout]
    out = run_posttrain(
        *sft_flags(sft["hf"], sft["data"]),
        *extra,
        "--tensor-model-parallel-size",
        str(tp),
        "--pipeline-model-parallel-size",
        str(pp),
        "--load",
        str(sft["ckpts"][layout]),
        nproc=tp * pp,
    )
    got = losses(out)
    assert list(got) == [1], out[-3000:]
    rel = abs(got[1] - sft["ref"]) / sft["ref"]
    print(f"{layout} {extra}: posttrain_gpt {got[1]:.7e} transformers {sft['ref']:.7e} relative {rel:.2e}")
    assert rel <= REL, (got[1], sft["ref"], rel)
    assert re.search(
        rf"1 samples are longer than --seq-length {SEQ} \(the longest {SEQ + 10} tokens\)", out
    ), out


# ---- packed = unpacked; one SGD step = transformers' gradient; back to HF ----------------------------------
PACK_LENGTHS = [(9, 30), (20, 17), (5, 8), (6, 14)]  # packs [39 + 13], [37 + 20] of at most SEQ - 1 tokens
PACKS = [(0, 2), (1, 3)]
LR = 1.0  # SGD: the first step is w - LR * gradient (the momentum buffer starts as the gradient)


def _neat_packs(samples) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The packs preprocess_data.py --pack --neat-pack writes: samples numbered 1, 2 in the mask, padding 0 /
    -100."""
    rows = []
    for pack in PACKS:
        ids = np.full(SEQ, VOCAB - 1)
        labels = np.full(SEQ, -100)
        mask = np.zeros(SEQ, dtype=np.int64)
        at = 0
        for number, i in enumerate(pack, start=1):
            sample_ids, sample_labels = samples[i]
            ids[at:at + sample_ids.size] = sample_ids
            labels[at:at + sample_ids.size] = sample_labels
            mask[at:at + sample_ids.size] = number
            at += sample_ids.size
        rows.append((ids, mask, labels))
    return rows


def _hf_sgd_step(hf_dir, samples) -> dict[str, torch.Tensor]:
    """transformers: the weights after one SGD step (LR) on the token-weighted loss of all samples."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    total, count = 0.0, 0
    for ids, labels in samples:
        logits = model(torch.tensor(ids)[None]).logits[0, :-1]
        target = torch.tensor(labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
    (total / count).backward()
    return {name: (p - LR * p.grad).detach() for name, p in model.named_parameters()}


def test_packed_equals_unpacked_and_one_step_is_transformers_sgd_step(sft, tmp_path):
    """Packed (--reset-attention-mask) and unpacked runs of the same samples: the same loss, the same weights
    after one SGD step, and those weights are transformers' (token-weighted gradient); the checkpoint converts
    back to HF and generates."""
    from transformers import AutoModelForCausalLM

    from mindspeed_llm.convert.convert import ConvertOptions, convert

    samples = _pack_samples()
    unpacked = write_instruction_data(
        tmp_path / "unpacked" / "d", [(i, np.ones_like(i), lab) for i, lab in samples]
    )
    packed = write_instruction_data(tmp_path / "packed" / "d", _neat_packs(samples))
    sgd = ["--optimizer", "sgd", "--load", str(sft["ckpts"]["tp1"])]
    runs = {}
    for name, data, gbs, extra in (
        ("unpacked", unpacked, 4, ()),
        ("packed", packed, 2, ("--reset-attention-mask",)),
    ):
        save = tmp_path / f"save_{name}"
        out = run_posttrain(*sft_flags(sft["hf"], data, lr=LR, gbs=gbs), *sgd, *extra, "--save", str(save))
        weights = torch.load(save / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)[
            "model"
        ]
        runs[name] = (losses(out), weights, save)
    total, count = hf_token_loss(sft["hf"], samples)
    for name, (got, _, _) in runs.items():
        assert list(got) == [1]
        assert abs(got[1] - total / count) / (total / count) <= REL, (name, got, total / count)
    for key, value in runs["unpacked"][1].items():
        if isinstance(value, torch.Tensor) and not key.endswith("_extra_state"):
            torch.testing.assert_close(runs["packed"][1][key], value, rtol=1e-5, atol=1e-6, msg=key)

    hf_back = tmp_path / "hf_back"
    convert(ConvertOptions(load_model_type="mg", save_model_type="hf", load_dir=str(runs["unpacked"][2]),
                           save_dir=str(hf_back), hf_dir=str(sft["hf"]), progress=False))
    model = AutoModelForCausalLM.from_pretrained(str(hf_back), dtype=torch.float32).eval()
    want = _hf_sgd_step(sft["hf"], samples)
    start = dict(AutoModelForCausalLM.from_pretrained(sft["hf"], dtype=torch.float32).named_parameters())
    moved = 0.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, float((want[name] - start[name]).abs().max()))
    assert moved > 1e-2, moved  # the step is large against the tolerance: the comparison has teeth
    prompt = torch.tensor(samples[0][0][:9])[None]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=VOCAB - 1)
    assert generated.shape == (1, 15) and int(generated.max()) < VOCAB


def _pack_samples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for prompt, answer in PACK_LENGTHS:
        ids = rng.integers(3, VOCAB - 1, prompt + answer)
        out.append((ids, np.concatenate([np.full(prompt, -100), ids[prompt:]])))
    return out
