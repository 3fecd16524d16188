"""Two "nodes" on loopback (two torchrun invocations, NNODES=2, NODE_RANK 0/1) train together.

Each node has its own copy of the data and so its own dataset-cache folder: with --no-shared-storage
every node's first process builds the index there (otherwise only global rank 0 would, and node 1
would find no cache), and writes the checkpoint tracker into its own --save folder (so a resume on
that node finds it).
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.pretrain_helpers import PRETRAIN, losses, make_indexed_dataset, train_flags
from tests.helpers.launch import run_nodes

pytestmark = pytest.mark.slow

MODEL = [
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--ffn-hidden-size",
    "128",
    "--num-attention-heads",
    "4",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--swiglu",
    "--disable-bias-linear",
    "--normalization",
    "RMSNorm",
    "--position-embedding-type",
    "rope",
    "--untie-embeddings-and-output-weights",
    "--attention-dropout",
    "0",
    "--hidden-dropout",
    "0",
    "--make-vocab-size-divisible-by",
    "1",
]


def test_two_nodes_on_loopback_each_build_their_own_index(tmp_path):
    data = [make_indexed_dataset(tmp_path / f"node{node}" / "dataset" / "corpus_text_document", seed=5)
            for node in (0, 1)]
    outs = run_nodes(PRETRAIN, [[*MODEL, *train_flags(prefix, iters=4, gbs=4, mbs=2), "--no-shared-storage",
                                 "--save", "ckpt"] for prefix in data], tmp_path)
    assert "initialized world of 2" in outs[0] and "DP=2" in outs[0]
    assert sorted(losses(outs[1])) == [1, 2, 3, 4]  # the last rank (node 1) prints the progress
    for node in (0, 1):  # --save ckpt is node-local: each node's first process writes the tracker there
        tracker = tmp_path / f"node{node}" / "ckpt" / "latest_checkpointed_iteration.txt"
        assert tracker.read_text().strip() == "4", f"node {node} has no tracker"
    for prefix in data:
        cache = os.path.join(prefix, "cache", "GPTDataset_indices")  # megatron-core puts it under the prefix
        assert any(name.endswith("shuffle_index.npy") for name in os.listdir(cache)), (
            f"no index built in {cache}"
        )
