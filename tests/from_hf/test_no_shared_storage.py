"""--no-shared-storage: two "nodes" on loopback (node ranks 0 and 1 of --nnodes 2: each node's one worker with
the environment torchrun gives it, tests.helpers.launch.run_node_workers), each with its own storage (its own
working folder holding the HF folder and the raw data), run the same command; each node's first process
converts and preprocesses into its own folder, and they train together. Each node's first process also
builds megatron-core's dataset index in its own dataset-cache folder and writes the checkpoint tracker into
its own --save folder (so a resume on that node finds it).

Without --no-shared-storage only global rank 0 builds (MindSpeed-LLM's rule: one node or shared storage), and
node 1 would wait for a cache that never appears on its storage (and find no index, no tracker).
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from tests.e2e.pretrain_helpers import PRETRAIN, loss_strings, model_flags
from tests.helpers.launch import run_node_workers

pytestmark = pytest.mark.slow


def test_each_node_builds_its_own_caches_without_shared_storage(tmp_path):
    from tests.helpers.tiny import make_hf_model

    hf = make_hf_model(tmp_path / "download" / "hf", "qwen3", num_layers=2)
    rng = random.Random(0)
    words = [[f"w{rng.randrange(3, 128)}" for _ in range(rng.randrange(8, 30))] for _ in range(24)]
    rows = [{"text": " ".join(w)} for w in words]
    for node in (0, 1):  # each node's storage: the model and the data copied, at the same relative paths
        shutil.copytree(hf, tmp_path / f"node{node}" / "model_from_hf" / "hf")
        (tmp_path / f"node{node}" / "dataset").mkdir()
        (tmp_path / f"node{node}" / "dataset" / "rows.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    flags = [
        *map(str, model_flags(hf)),
        *"--make-vocab-size-divisible-by 1 --seq-length 32 --micro-batch-size 1".split(),
        *"--global-batch-size 2 --train-iters 2 --lr 1e-3 --log-interval 1 --eval-iters 0".split(),
        *"--split 100,0,0 --num-workers 0 --load ./model_from_hf/hf --data-path ./dataset/rows.jsonl".split(),
        *"--handler-name GeneralPretrainHandler --no-load-optim --no-load-rng".split(),
        "--no-shared-storage",
        # the save is node-local (relative to each node's folder); an explicit conversion flag: no HF copies,
        # which need every rank's files in one place
        "--enable-hf2mg-convert",
        "--save",
        "ckpt",
    ]
    outs = run_node_workers(PRETRAIN, [flags, flags], tmp_path)
    for node, out in enumerate(outs):
        # Each node built both caches on its own storage (relative to its folder), none waited for the other.
        assert "HF -> Megatron checkpoint: building ./model_from_hf/hf/megatron_cache_tp1pp1ep1" in out, out
        assert "preprocessed rows.jsonl: building" in out and "waiting" not in out
        folder = tmp_path / f"node{node}"
        marker = folder / "model_from_hf" / "hf" / "megatron_cache_tp1pp1ep1" / ".mindspeed_llm_cache.json"
        assert marker.is_file()
        assert len(list((folder / "dataset").glob("rows.mindspeed_cache-*[!k]"))) == 1
        # megatron-core's dataset index, built on this node's storage (under the preprocessed prefix)
        indices = list((folder / "dataset").rglob("GPTDataset_indices"))
        assert indices and any(n.name.endswith("shuffle_index.npy") for n in indices[0].iterdir()), indices
        # --save ckpt is node-local: each node's first process writes the tracker there
        tracker = folder / "ckpt" / "latest_checkpointed_iteration.txt"
        assert tracker.read_text().strip() == "2", f"node {node} has no tracker"
    assert "initialized world of 2" in outs[0] and "DP=2" in outs[0]
    assert sorted(loss_strings(outs[1])) == [2]  # the last rank (node 1) prints; a conversion continues at 2
