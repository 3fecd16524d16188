"""Ring, Ulysses and hybrid attention across real gloo ranks equal dense causal attention (output and
gradients).

One 4-process torchrun launch (tests/ops/context_parallel_worker.py) runs every case on CP groups of
2 and 4; each test reads its case's line. The reference is ``attention_math`` in float64 on the
whole sequence (with dropout: given the mask rebuilt for every global (query, key) pair); the chunk
pairs are cut by megatron-core's ``get_batch_on_this_cp_rank``. Packed samples (documents): the
reference is torch's SDPA on each document alone (float64); with dropout ``attention_math`` on each document
given the whole batch's rebuilt mask.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindspeed_llm.ops.context_parallel_kernels import (
    _document_pieces,
    _pair_positions,
    chunk_order,
    hybrid_cp_rank_groups,
    ulysses_kv_repeat,
)
from tests.conftest import torchrun

WORKER = Path(__file__).with_name("context_parallel_worker.py")


@pytest.fixture(scope="module")
def cases() -> dict[str, str]:
    """The worker's ``CASE name ok err`` lines by name (one launch for the module)."""
    proc = torchrun(WORKER, nproc=4, timeout=400)
    return {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("CASE ")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ring_cp2_mha", "ring_cp4_gqa", "ring_cp4_blockwise", "ring_cp2_bf16",
                                  "ring_cp4_npu_stand_in"])
def test_ring_attention_equals_full_attention(cases, name):
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ring_cp2_dropout", "ring_cp4_dropout"])
def test_ring_attention_dropout_equals_attention_with_the_rebuilt_mask(cases, name):
    # The worker also checked that CP 1's blockwise kernel with the same seed gives the same output.
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ulysses_cp2_mha", "ulysses_cp4_gqa", "ulysses_cp4_kv_repeat"])
def test_ulysses_attention_equals_full_attention(cases, name):
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hybrid_cp4_u2_gqa", "hybrid_cp4_u2_kv_repeat_blockwise"])
def test_hybrid_attention_equals_full_attention(cases, name):
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["ulysses_cp2_dropout", "ulysses_cp4_dropout_kv_repeat", "hybrid_cp4_u2_dropout"]
)
def test_ulysses_and_hybrid_dropout_equal_attention_with_the_rebuilt_mask(cases, name):
    # The mask is keyed by global heads and positions: any CP size drops what CP 1 drops with the seed.
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
def test_ulysses_dropout_draws_from_megatrons_model_parallel_rng(cases):
    # Under the module's RNG rule (the tracker fork) CP 2 equals CP 1's local attention with dropout,
    # and the default generator is untouched.
    assert "ulysses_cp2_dropout_rng" in cases, sorted(cases)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "ring_cp2_documents_gqa",
        "ring_cp4_documents_mqa",
        "ring_cp2_one_document_per_sample",
        "ulysses_cp2_documents_gqa",
        "ulysses_cp4_documents_kv_repeat",
        "hybrid_cp4_u2_documents_gqa",
    ],
)
def test_attention_over_packed_documents_equals_per_document_attention(cases, name):
    # Forward and dQ/dK/dV with the whole sequence's documents, finite everywhere (rows without a visible key
    # in a block add nothing), against SDPA on each document alone.
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ring_cp2_documents_dropout", "ring_cp4_documents_dropout_mqa",
                                  "ulysses_cp2_documents_dropout", "ulysses_cp4_documents_dropout_kv_repeat",
                                  "hybrid_cp4_u2_documents_dropout"])
def test_packed_documents_with_dropout_equal_the_per_document_rebuilt_mask(cases, name):
    # Forward and dQ/dK/dV against attention_math on each document with dropout_multiplier's mask of the whole
    # batch cut to it; the worker also checked CP 1's packed path (per-document and masked blockwise) against
    # it.
    assert name in cases, f"case {name} did not report: {sorted(cases)}"


def _ids(lengths_per_sample):
    return torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths_per_sample])


def test_document_pieces_of_the_ring_blocks():
    # The worker's documents at CP 2 (chunks of 16): sample 0 [5, 11, 3, 20, 9, 16], sample 1 [30, 2, 1, 15,
    # 10, 6].
    docs = _ids([[5, 11, 3, 20, 9, 16], [30, 2, 1, 15, 10, 6]])
    rank0, rank1 = _pair_positions(0, 2, 16, "cpu"), _pair_positions(1, 2, 16, "cpu")  # chunks (0, 3), (1, 2)

    def pieces(q_pos, k_pos):
        found = _document_pieces(docs[:, q_pos], docs[:, k_pos])
        return found if found is None else [(b, (r.start, r.stop), (c.start, c.stop)) for b, r, c in found]

    # Rank 0's second chunk (48..63) against rank 1's chunks: both samples start a document at 48: nothing
    # shared.
    assert pieces(rank0[16:], rank1[:16]) == [] and pieces(rank0[16:], rank1[16:]) == []
    # Rank 1's first chunk (16..31) against chunk 0: sample 0 starts a document at 16; sample 1's first
    # document runs to 29: its rows 0..13 (positions 16..29) see all of chunk 0, rows 14 and 15 see nothing
    # there.
    assert pieces(rank1[:16], rank0[:16]) == [(1, (0, 14), (0, 16))]
    # Step 0 of rank 1 (chunks 1 and 2 against themselves): one causal piece per document of each sample.
    assert pieces(rank1, rank1) == [(0, (0, 3), (0, 3)), (0, (3, 23), (3, 23)), (0, (23, 32), (23, 32)),
                                    (1, (0, 14), (0, 14)), (1, (14, 16), (14, 16)), (1, (16, 17), (16, 17)),
                                    (1, (17, 32), (17, 32))]
    # One document per sample: the block runs whole.
    one = _ids([[64], [64]])
    assert _document_pieces(one[:, rank1], one[:, rank0[:16]]) is None


def test_hybrid_groups_are_mindspeeds_layout():
    # MindSpeed's hybrid_cp_algo: Ulysses over consecutive CP ranks, ring over every U-th one.
    ulysses, ring = hybrid_cp_rank_groups([1, 3, 5, 7, 9, 11, 13, 15], 2)  # a CP group at TP 2
    assert ulysses == [[1, 3], [5, 7], [9, 11], [13, 15]]
    assert ring == [[1, 5, 9, 13], [3, 7, 11, 15]]
    ulysses, ring = hybrid_cp_rank_groups(list(range(8)), 4)
    assert ulysses == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert ring == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_chunk_order_is_megatrons_pairing():
    # CP 2: ranks hold chunks (0, 3) and (1, 2); laid end to end: 0 3 1 2.
    to_natural, to_ranks = chunk_order(2)
    assert to_ranks.tolist() == [0, 3, 1, 2]
    assert to_ranks[to_natural].tolist() == [0, 1, 2, 3]


def test_ulysses_kv_repeat_rule():
    assert ulysses_kv_repeat(8, 8, 4) == 1
    assert ulysses_kv_repeat(8, 2, 4) == 2  # 2 K/V heads -> 4, one per CP rank
    assert ulysses_kv_repeat(4, 1, 4) == 4
    assert ulysses_kv_repeat(12, 3, 2) == 2
    with pytest.raises(ValueError, match="divisible by --context-parallel-size"):
        ulysses_kv_repeat(6, 2, 4)
