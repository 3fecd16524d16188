"""Megatron legacy layout IO: names, tracker, atomic writes, weights_only loading."""

import argparse
import os

import pytest
import torch

from mindspeed_llm.runtime.checkpoint import (
    CheckpointError,
    checkpoint_dir_for,
    load_rank_state,
    read_tracker,
    safe_torch_load,
    save_rank_state,
    write_tracker,
)
from mindspeed_llm.runtime.checkpoint.layout import parallel_sizes


def test_names(tmp_path):
    assert checkpoint_dir_for(tmp_path, 1, 0, 0, 1).endswith("iter_0000001/mp_rank_00")
    assert checkpoint_dir_for(tmp_path, 20, 1, 3, 4).endswith("iter_0000020/mp_rank_01_003")
    assert checkpoint_dir_for(tmp_path, "release", 0, 0, 1).endswith("release/mp_rank_00")


def test_save_load_round_trip(tmp_path):
    args = argparse.Namespace(
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=1,
        padded_vocab_size=8,
        params_dtype=torch.bfloat16,
        hf_config={"a": [1, None]},
    )
    for tp in range(2):
        model = {"w": torch.full((2,), float(tp)), "x._extra_state": None}
        legacy = {"args": args, "checkpoint_version": 3.0, "iteration": 7, "model": model}
        save_rank_state(tmp_path, 7, tp, 0, 1, legacy)
    write_tracker(tmp_path, 7)
    assert read_tracker(tmp_path) == 7
    assert parallel_sizes(tmp_path, 7) == (2, 1)
    state = load_rank_state(tmp_path, None, 1, 0, 1)
    assert state["checkpoint_version"] == 3.0 and state["iteration"] == 7
    assert state["args"].padded_vocab_size == 8 and state["args"].params_dtype == torch.bfloat16
    assert torch.equal(state["model"]["w"], torch.ones(2))
    assert not [n for n in os.listdir(checkpoint_dir_for(tmp_path, 7, 1, 0, 1)) if n.endswith(".tmp")]


class _Payload:
    pass


def test_safe_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        safe_torch_load(path)


def test_missing_rank_is_reported(tmp_path):
    args = argparse.Namespace(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    for tp, pp in [(0, 0), (1, 0), (0, 1)]:
        save_rank_state(tmp_path, 1, tp, pp, 2, {"args": args, "checkpoint_version": 3.0, "iteration": 1,
                                                 "model": {}})
    write_tracker(tmp_path, 1)
    with pytest.raises(CheckpointError, match="mp_rank_01_001"):
        parallel_sizes(tmp_path, 1)


def test_tracker_errors(tmp_path):
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt"):
        read_tracker(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
    assert read_tracker(tmp_path) == "release"


def test_allowed_globals_keep_registrations_made_inside():
    """megatron-core registers its safe globals on first import, possibly during one of our loads: they
    stay."""
    from mindspeed_llm.runtime.checkpoint.layout import allowed_globals

    with allowed_globals():
        from megatron.core import safe_globals

        safe_globals.register_safe_globals()
    assert argparse.Namespace in torch.serialization.get_safe_globals()
