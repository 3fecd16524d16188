"""A packed batch (several documents per sample, ``packed_seq_params`` from ``position_ids``) through our
GPTModel gives, per document, transformers' logits for that document run alone (fp32): megatron's local
attention (patched) and ``--use-flash-attn``'s at TP1 in this process; TP2, TP2 with sequence parallel and
PP2 in one torchrun launch."""

from __future__ import annotations

import json

import pytest
import torch
from megatron.core import parallel_state as ps

from mindspeed_llm.convert import ConvertOptions, convert
from mindspeed_llm.convert.verify import _ensure_single_process_parallel_state
from mindspeed_llm.ops.packing import document_packed_seq_params
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.conftest import torchrun
from tests.models.packed_worker import packed_logits

VOCAB = 128
# Per-sample document lengths: 3 documents, 2 documents (one of length 1), one whole-sample document.
DOCS = [[5, 7, 4], [15, 1], [16]]
TOLERANCE = 1e-5


def _batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (len(DOCS), sum(DOCS[0])), generator=gen)
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in DOCS])
    return ids, position_ids


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny Qwen2.5-shaped HF model (GQA, qkv bias), its TP1 and TP2 conversions, and its per-document
    logits."""
    root = tmp_path_factory.mktemp("packed")
    hf = make_tiny_hf_model(str(root / "hf"), "qwen2", vocab_size=VOCAB, num_layers=2)
    ids, _ = _batch()
    expected = torch.zeros(*ids.shape, VOCAB)
    with torch.no_grad():
        for bi, row in enumerate(DOCS):
            start = 0
            for n in row:
                expected[bi, start:start + n] = hf(ids[bi:bi + 1, start:start + n]).logits[0].float()
                start += n
        unpacked = hf(ids).logits.float()
    roots = {}
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        roots[(tp, pp)] = convert(
            ConvertOptions(
                "hf",
                "mg",
                str(root / "hf"),
                str(root / f"mg_tp{tp}pp{pp}"),
                target_tp=tp,
                target_pp=pp,
                add_qkv_bias=True,
                progress=False,
            )
        )
    return {"root": root, "roots": roots, "expected": expected, "unpacked": unpacked}


def _max_diff(logits, expected):
    return (logits[..., :VOCAB].float() - expected).abs().max().item()


@pytest.mark.parametrize("flash", [False, True], ids=["local_attention", "flash_attention_fused_rope"])
def test_packed_batch_equals_each_document_alone(converted, flash):
    ids, position_ids = _batch()
    created = _ensure_single_process_parallel_state()
    try:
        logits = packed_logits(converted["roots"][(1, 1)], ids, position_ids, flash=flash)
    finally:
        ps.destroy_model_parallel()
        if created:
            torch.distributed.destroy_process_group()
    assert _max_diff(logits, converted["expected"]) <= TOLERANCE
    # Teeth: the same tokens attending across documents (transformers on whole samples) differ.
    assert _max_diff(logits, converted["unpacked"]) > 1e-2


def test_packed_params_refuse_an_attention_mask(converted):
    from mindspeed_llm.convert import model_config_from_args
    from mindspeed_llm.models import build_gpt_model
    from mindspeed_llm.runtime.checkpoint import load_rank_state

    ids, position_ids = _batch()
    created = _ensure_single_process_parallel_state()
    try:
        state = load_rank_state(converted["roots"][(1, 1)], None, 0, 0, 1)
        cfg = model_config_from_args(state["args"]).replace(params_dtype=torch.float32)
        model = build_gpt_model(cfg, padded_vocab_size=state["args"].padded_vocab_size, pre_process=True,
                                post_process=True, use_cpu_initialization=True, perform_initialization=False)
        mask = torch.triu(torch.ones(16, 16, dtype=torch.bool), 1)[None, None]
        with pytest.raises(ValueError, match="attention_mask=None"):
            model(ids, position_ids, mask, packed_seq_params=document_packed_seq_params(position_ids))
    finally:
        ps.destroy_model_parallel()
        if created:
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_packed_batch_under_tensor_and_pipeline_parallelism(converted, tmp_path):
    ids, position_ids = _batch()
    cases = [
        {
            "name": "tp2",
            "mg_root": converted["roots"][(2, 1)],
            "tp": 2,
            "pp": 1,
            "sequence_parallel": False,
            "flash": False,
        },
        {
            "name": "tp2_sp_flash",
            "mg_root": converted["roots"][(2, 1)],
            "tp": 2,
            "pp": 1,
            "sequence_parallel": True,
            "flash": True,
        },
        {
            "name": "pp2",
            "mg_root": converted["roots"][(1, 2)],
            "tp": 1,
            "pp": 2,
            "sequence_parallel": False,
            "flash": False,
        },
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"ids": ids.tolist(), "position_ids": position_ids.tolist(), "cases": cases}))
    out = tmp_path / "out"
    out.mkdir()
    torchrun("tests/models/packed_worker.py", str(spec), str(out), nproc=2, timeout=300)
    diffs = {c["name"]: _max_diff(torch.load(out / f"{c['name']}.pt"), converted["expected"]) for c in cases}
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
