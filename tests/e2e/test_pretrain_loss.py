"""Megatron-LM's loss semantics against a hand computation with transformers' model.

``--eod-mask-loss`` on documents of very different lengths gives every micro-batch its own number
of loss tokens. DP2 x 2 micro-batches of one sample: the logged loss must be the token-weighted
mean over the whole global batch (Megatron-LM's ``pretrain_gpt.py`` returns a sum and a count),
and the gradient norm must be that of the per-micro-batch means averaged (default) or of the
token-weighted mean (``--calculate-per-token-loss``). The reference reads the same samples with
megatron-core's ``GPTDataset`` and computes the per-token losses with transformers' Qwen2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.e2e.pretrain_helpers import convert_hf_to_mg, make_hf_model, model_flags, run_pretrain, train_flags

pytestmark = pytest.mark.slow

EOD = 127  # NullTokenizer --vocab-size 127: ids 0..126, EOD 127
SEQ = 32
_GRAD_NORM = r"iteration\s+1/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|.*? grad norm: ([0-9.]+) \|"


def _uneven_documents(prefix) -> str:
    """Most documents are a lone EOD (masked out), the rest 5-39 tokens: loss masks differ between samples."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(7)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(300):
        n = int(rng.integers(0, 2)) if rng.random() < 0.85 else int(rng.integers(5, 40))
        ids = np.append(rng.integers(3, EOD, n), EOD).astype(np.int64)
        builder.add_document(torch.from_numpy(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


class _Tokenizer:
    """What GPTDataset reads from a tokenizer (vocabulary, EOD, identity for its cache key)."""

    vocab_size = EOD
    eod = EOD
    unique_identifiers = {"class": "reference"}


def _samples(prefix: str, cache, n: int) -> list[dict]:
    """The first ``n`` training samples as megatron-core's GPTDataset yields them for this run's flags."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=SEQ,
        blend_per_split=[([prefix], None), None, None],
        split=None,
        path_to_cache=str(cache),
        tokenizer=_Tokenizer(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=True,
        create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n, 0, 0], lambda: True, config).build()
    return [train[i] for i in range(n)]


def _reference(hf_dir, samples: list[dict]) -> dict[str, float]:
    """Logged loss and both gradient norms, by hand from transformers' per-token losses."""
    from tests.checkpoint.tiny_models import load_hf_model

    model = load_hf_model(str(hf_dir))
    sums, counts = [], []
    for sample in samples:
        logits = model(sample["tokens"][None]).logits[0].float()
        per_token = torch.nn.functional.cross_entropy(logits, sample["labels"], reduction="none")
        sums.append((per_token * sample["loss_mask"]).sum())
        counts.append(sample["loss_mask"].sum())
    total, tokens = torch.stack(sums).sum(), torch.stack(counts).sum()
    mean_of_means = torch.stack([s / c for s, c in zip(sums, counts)]).mean()  # one sample per micro-batch

    def grad_norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))

    norms = {"grad_norm": grad_norm(mean_of_means), "grad_norm_per_token": grad_norm(total / tokens)}
    return {"loss": float((total / tokens).detach()), "mean_of_means": float(mean_of_means.detach()), **norms}


def _first_step(out: str) -> tuple[float, float]:
    import re

    match = re.search(_GRAD_NORM, out)
    assert match, out[-3000:]
    return float(match.group(1)), float(match.group(2))


def test_logged_loss_is_token_weighted_and_per_token_loss_scales_gradients(tmp_path):
    # Large initial weights: peaked logits, so per-token losses (and their weighting) differ a lot.
    hf = make_hf_model(tmp_path / "hf", num_layers=2, initializer_range=0.5)
    mg = convert_hf_to_mg(hf, tmp_path / "mg")
    data = _uneven_documents(tmp_path / "data" / "uneven_text_document")
    flags = model_flags(hf) + train_flags(data, iters=2, mbs=1, gbs=4, seq=SEQ)
    at = flags.index("--data-path")
    flags[at:at + 4] = ["--train-data-path", data]  # per-split paths (no --split)
    flags += ["--eod-mask-loss", "--load", str(mg), "--finetune"]

    ref = _reference(hf, _samples(data, tmp_path / "ref_cache", 4))
    masks = [int(s["loss_mask"].sum()) for s in _samples(data, tmp_path / "ref_cache", 4)]
    assert len(set(masks)) > 1, f"the micro-batches should have uneven loss masks: {masks}"
    assert abs(ref["loss"] - ref["mean_of_means"]) > 1e-3 * ref["loss"], (
        "the test needs the two reductions apart"
    )
    assert abs(ref["grad_norm"] - ref["grad_norm_per_token"]) > 0.01

    loss, norm = _first_step(run_pretrain(*flags, nproc=2))  # DP2, 2 micro-batches each
    assert loss == pytest.approx(ref["loss"], rel=2e-6)
    assert norm == pytest.approx(ref["grad_norm"], abs=1.5e-3)

    loss, norm = _first_step(run_pretrain(*flags, "--calculate-per-token-loss", nproc=2))
    assert loss == pytest.approx(ref["loss"], rel=2e-6)
    assert norm == pytest.approx(ref["grad_norm_per_token"], abs=1.5e-3)
