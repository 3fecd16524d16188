"""The typed transforms of the mapping table, on small hand-made tensors."""

import pytest
import torch

from mindspeed_llm.convert.mapping import (
    Split,
    layers_per_stage,
    pad_vocab,
    padded_vocab_size,
    qkv_deinterleave,
    qkv_interleave,
    shard,
    stage_layers,
    unshard,
)
from mindspeed_llm.models.families import ModelConfig


def _cfg(heads=4, groups=2, d=3):
    return ModelConfig(
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        num_layers=4,
        hidden_size=heads * d,
        ffn_hidden_size=8,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=d,
        vocab_size=10,
        max_position_embeddings=16,
    )


def test_qkv_is_interleaved_per_query_group():
    cfg = _cfg(heads=4, groups=2, d=1)
    q = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # heads 0,1 -> group 0; 2,3 -> group 1
    k = torch.tensor([[10.0], [11.0]])
    v = torch.tensor([[20.0], [21.0]])
    qkv = qkv_interleave(q, k, v, cfg)
    assert qkv.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    for a, b in zip(qkv_deinterleave(qkv, cfg), (q, k, v)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_qkv_round_trip_weight_and_bias(groups):
    cfg = _cfg(heads=4, groups=groups, d=3)
    q, k, v = torch.randn(12, 12), torch.randn(3 * groups, 12), torch.randn(3 * groups, 12)
    assert all(
        torch.equal(a, b) for a, b in zip(qkv_deinterleave(qkv_interleave(q, k, v, cfg), cfg), (q, k, v))
    )
    qb, kb, vb = torch.randn(12), torch.randn(3 * groups), torch.randn(3 * groups)
    out = qkv_deinterleave(qkv_interleave(qb, kb, vb, cfg), cfg)
    assert all(torch.equal(a, b) for a, b in zip(out, (qb, kb, vb)))


def test_gate_up_rank_holds_its_gate_and_up_slices():
    gate, up = torch.arange(8.0).reshape(4, 2), 100 + torch.arange(8.0).reshape(4, 2)
    full = torch.cat([gate, up])
    parts = shard(Split.GATE_UP, full, 2)
    assert torch.equal(parts[0], torch.cat([gate[:2], up[:2]]))
    assert torch.equal(parts[1], torch.cat([gate[2:], up[2:]]))
    assert torch.equal(unshard(Split.GATE_UP, parts), full)


@pytest.mark.parametrize("split,dim", [(Split.COLUMN, 0), (Split.ROW, 1), (Split.VOCAB, 0)])
def test_column_row_split(split, dim):
    full = torch.randn(8, 6)
    parts = shard(split, full, 2)
    assert torch.equal(parts[0], full.chunk(2, dim=dim)[0])
    assert torch.equal(unshard(split, parts), full)
    # each part owns its storage: torch.save writes only that rank's bytes
    assert parts[0].untyped_storage().nbytes() == parts[0].numel() * parts[0].element_size()


def test_replicated():
    full = torch.randn(6)
    parts = shard(Split.REPLICATED, full, 3)
    assert len(parts) == 3 and all(torch.equal(p, full) for p in parts)


def test_vocab_padding_repeats_last_row():
    assert padded_vocab_size(151665, 1) == 151665  # default divisor 1 keeps every row
    assert padded_vocab_size(127, 2) == 128
    assert padded_vocab_size(127, 2, divisible_by=8) == 128
    assert padded_vocab_size(129, 2, divisible_by=8) == 144
    assert padded_vocab_size(127, 2, requested=200) == 200
    w = torch.arange(6.0).reshape(3, 2)
    padded = pad_vocab(w, 5)
    assert torch.equal(padded[:3], w) and torch.equal(padded[3], w[-1]) and torch.equal(padded[4], w[-1])


def test_layers_per_stage():
    assert layers_per_stage(28, 4) == [7, 7, 7, 7]
    counts = layers_per_stage(28, 4, [6, 8, 8, 6])
    assert [list(stage_layers(counts, p))[:1] for p in range(4)] == [[0], [6], [14], [22]]
