"""The one TP rule for LoRA factors (lora/tp.py): the layers build each rank's A and B with it and
conversion shards and merges adapter checkpoints with it, and the factor that follows the base layer's split
is cut exactly as the converter cuts the base weight.

The rule against peft end to end, at TP2: tests/models/test_lora.py's
test_first_step_loss_and_gradients_equal_peft[2-1] (a peft adapter sharded by conversion, loaded strictly into
the layers at TP2, gives peft's loss; the rank gradients merged by the rule are peft's) and
test_merged_export_of_a_bf16_base_equals_peft_merge (TP2 shard and merge by conversion equal peft's merge).
"""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.convert.mapping import LLAMA_LIKE_LAYER, Split, shard
from mindspeed_llm.lora.keys import LORA_MODULES
from mindspeed_llm.lora.tp import factor_splits, shard_adapter, unshard_adapter

R, HIDDEN, FFN = 4, 32, 48
# (in, out) of each layer's whole base weight; qkv of 4 heads in 2 query groups, head size 8.
SHAPES = {"linear_qkv": (HIDDEN, HIDDEN + 2 * 2 * 8), "linear_proj": (HIDDEN, HIDDEN),
          "linear_fc1": (HIDDEN, 2 * FFN), "linear_fc2": (FFN, HIDDEN)}


@pytest.mark.parametrize("module", list(LORA_MODULES))
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_then_unshard_gives_the_whole_factors_back(module, tp):
    n_in, n_out = SHAPES[module]
    a, b = torch.randn(R, n_in), torch.randn(n_out, R)
    pairs = shard_adapter(module, a, b, tp)
    assert len(pairs) == tp
    got_a, got_b = unshard_adapter(module, pairs)
    assert torch.equal(got_a, a) and torch.equal(got_b, b)
    if tp > 1:  # each rank's tensors own their storage (rank files are saved one by one)
        ptrs = [t.untyped_storage().data_ptr() for pair in pairs for t in pair]
        ptrs += [a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()]
        assert len(set(ptrs)) == len(ptrs)


@pytest.mark.parametrize("tp", [2, 4])
def test_the_split_factor_is_cut_as_the_converter_cuts_the_base_weight(tp):
    """Column-parallel layers: B's rank rows are the base weight's rank rows (B A has the base's output
    rows); row-parallel: A's rank columns are the base weight's. The other factor is whole everywhere."""
    base_split = {m.mcore: m.split for m in LLAMA_LIKE_LAYER}
    for module, lm in LORA_MODULES.items():
        n_in, n_out = SHAPES[module]
        a, b = torch.randn(R, n_in), torch.randn(n_out, R)
        split = base_split[lm.weight_key]
        a_split, b_split = factor_splits(module)
        pairs = shard_adapter(module, a, b, tp)
        if split is Split.ROW:
            assert b_split is Split.REPLICATED
            expected_a, expected_b = shard(Split.ROW, a, tp), [b] * tp
        else:
            assert a_split is Split.REPLICATED and split in (Split.COLUMN, Split.GATE_UP)
            expected_a, expected_b = [a] * tp, shard(split, b, tp)
        for (a_t, b_t), want_a, want_b in zip(pairs, expected_a, expected_b):
            assert torch.equal(a_t, want_a), module
            assert torch.equal(b_t, want_b), module
