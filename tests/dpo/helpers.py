"""Shared pieces of the DPO tests: pairs, their pairwise datasets, the tiny models and the flags of a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from tests.e2e.pretrain_helpers import VOCAB, model_flags

SEQ = 32
# (prompt, chosen, rejected) token counts: different lengths, so padding and the sum over tokens both matter.
SHAPES = [(5, 7, 3), (9, 2, 6), (3, 10, 8), (6, 4, 4)]


def make_pairs(seed: int = 0) -> list[dict]:
    """TRL's pre-tokenized pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``), ids 3..VOCAB-1."""
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt_ids": rng.integers(3, VOCAB, p).tolist(),
            "chosen_ids": rng.integers(3, VOCAB, c).tolist(),
            "rejected_ids": rng.integers(3, VOCAB, r).tolist(),
        }
        for p, c, r in SHAPES
    ]


def write_pairwise_data(
    prefix: Path, pairs: list[dict], *, drop: str | None = None, short: str | None = None
) -> str:
    """The four int32 datasets preprocess_data.py's pairwise handlers write: ids; labels -100 on the prompt.

    ``drop``: leave that dataset out; ``short``: write that one without its last pair (bad-input tests).
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    for side in ("chosen", "rejected"):
        for kind in ("input_ids", "labels"):
            key = f"{side}_{kind}"
            if key == drop:
                continue
            path = f"{prefix}_packed_{key}_document"
            builder = IndexedDatasetBuilder(f"{path}.bin", dtype=np.int32)
            rows = pairs[:-1] if key == short else pairs
            for pair in rows:
                answer = pair[f"{side}_ids"]
                row = (
                    pair["prompt_ids"] + answer
                    if kind == "input_ids"
                    else [-100] * len(pair["prompt_ids"]) + answer
                )
                builder.add_document(torch.tensor(row, dtype=torch.int64), [len(row)])
            builder.finalize(f"{path}.idx")
    return str(prefix)


def perturbed_copy(hf_dir: Path, out: Path, scale: float = 0.05, seed: int = 3) -> Path:
    """The HF model of ``hf_dir`` with every weight moved by noise: a reference unlike the policy."""
    from tests.helpers.tiny import load_hf_model

    model = load_hf_model(str(hf_dir))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, out / name)
    return out


def grads_as_hf_model(hf_dir: Path, grads: dict[str, torch.Tensor], out: Path) -> Path:
    """An HF model folder whose weights are ``grads`` (HF names): convert_ckpt.py lays them out per rank."""
    from tests.helpers.tiny import load_hf_model

    model = load_hf_model(str(hf_dir))
    state = {k: grads[k] for k in model.state_dict()}
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(out))
    return out


def dpo_flags(
    hf_dir: Path,
    data: str,
    *,
    loss: str = "sigmoid",
    gbs: int = 4,
    mbs: int = 2,
    lr: float = 0.0,
    iters: int = 1,
    extra: tuple = (),
) -> list[str]:
    """posttrain_gpt.py --stage dpo on the tiny model (NullTokenizer: ids 0..126)."""
    flags = [
        *model_flags(hf_dir),
        "--stage",
        "dpo",
        "--is-pairwise-dataset",
        "--dpo-loss-type",
        loss,
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
        iters,
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
        *extra,
    ]
    return [str(f) for f in flags]
