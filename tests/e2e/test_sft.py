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
from tests.e2e.pretrain_helpers import VOCAB, convert_hf_to_mg, losses, make_hf_model, model_flags

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


def write_instruction_data(prefix, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    """``prefix_packed_{input_ids,attention_mask,labels}_document`` (int32), one document per row."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    for key, col in (("input_ids", 0), ("attention_mask", 1), ("labels", 2)):
        path = f"{prefix}_packed_{key}_document"
        builder = IndexedDatasetBuilder(f"{path}.bin", dtype=np.int32)
        for row in rows:
            builder.add_document(torch.from_numpy(np.asarray(row[col], dtype=np.int64)), [len(row[col])])
        builder.finalize(f"{path}.idx")
    return str(prefix)


def hf_token_loss(hf_dir, samples, cut: int = SEQ) -> tuple[float, float]:
    """transformers' summed loss over the learned tokens of every sample (first ``cut`` tokens), and their count."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in samples:
            ids, labels = torch.tensor(ids[:cut])[None], torch.tensor(labels[:cut])[None]
            logits = model(ids).logits[0, :-1].double()
            target = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total, count


def sft_flags(hf_dir, data: str, *, lr: float = 0.0, gbs: int = len(LENGTHS), mbs: int = 2) -> list[str]:
    return [*model_flags(hf_dir), *[str(f) for f in [
        "--stage", "sft", "--prompt-type", "qwen", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", VOCAB - 1, "--data-path", data, "--split", "100,0,0", "--seq-length", SEQ,
        "--micro-batch-size", mbs, "--global-batch-size", gbs, "--train-iters", 1, "--lr", lr, "--min-lr", 0.0,
        "--lr-warmup-iters", 0, "--weight-decay", 0.0, "--clip-grad", 0.0, "--seed", 1234, "--log-interval", 1,
        "--eval-iters", 0, "--num-workers", 0, "--finetune",
    ]]]


def run_posttrain(*flags: str, nproc: int = 1) -> str:
    return torchrun(POSTTRAIN, *flags, nproc=nproc, timeout=240).stdout


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    hf = make_hf_model(root / "hf", kind="qwen2", initializer_range=0.2)
    samples = _samples()
    data = write_instruction_data(root / "data" / "alpaca", [(i, np.ones_like(i), lab) for i, lab in samples])
    ckpts = {lay: convert_hf_to_mg(hf, root / f"mg_{lay}", tp, pp) for lay, (tp, pp) in LAYOUTS.items()}
    total, count = hf_token_loss(hf, samples)
    return {"root": root, "hf": hf, "samples": samples, "data": data, "ckpts": ckpts, "ref": total / count}


@pytest.mark.parametrize("layout, extra", [("tp1", ()), ("tp2", ("--no-pad-to-seq-lengths",)),
                                           ("pp2", ("--no-pad-to-seq-lengths",))])
def test_first_step_loss_equals_transformers(sft, layout, extra):
    tp, pp = LAYOUTS[layout]
    out = run_posttrain(*sft_flags(sft["hf"], sft["data"]), *extra, "--tensor-model-parallel-size", str(tp),
                        "--pipeline-model-parallel-size", str(pp), "--load", str(sft["ckpts"][layout]), nproc=tp * pp)
    got = losses(out)
    assert list(got) == [1], out[-3000:]
    rel = abs(got[1] - sft["ref"]) / sft["ref"]
    print(f"{layout} {extra}: posttrain_gpt {got[1]:.7e} transformers {sft['ref']:.7e} relative {rel:.2e}")
    assert rel <= REL, (got[1], sft["ref"], rel)
    assert re.search(rf"1 samples are longer than --seq-length {SEQ} \(the longest {SEQ + 10} tokens\)", out), out
