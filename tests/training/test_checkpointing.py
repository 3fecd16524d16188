"""Checkpoint checks before the model exists: --load folders, launch vs checkpoint, padded vocabulary, args."""

from __future__ import annotations

import argparse

import pytest
import torch

from mindspeed_llm.checkpoint import layout
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.training.checkpointing import (
    adopt_padded_vocab,
    args_to_save,
    check_checkpoint_args,
    find_checkpoint,
)
from mindspeed_llm.training.training import padded_vocab_size


def ns(**kw):
    base = dict(load=None, save=None, tensor_model_parallel_size=1, pipeline_model_parallel_size=1, num_layers=4,
                hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2, kv_channels=16,
                add_qkv_bias=True, untie_embeddings_and_output_weights=True, num_layer_list=None,
                padded_vocab_size=None, make_vocab_size_divisible_by=128)
    base.update(kw)
    return argparse.Namespace(**base)


def test_load_folder_missing_is_an_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=f"--load {tmp_path / 'ckpt'}: the folder does not exist"):
        find_checkpoint(ns(load=str(tmp_path / "ckpt")))


def test_load_folder_without_tracker_is_an_error(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt missing.*other.txt"):
        find_checkpoint(ns(load=str(tmp_path)))


def test_load_equal_to_save_starts_fresh(tmp_path):
    assert find_checkpoint(ns(load=str(tmp_path / "c"), save=str(tmp_path / "c"))) is None


def test_exit_on_missing_checkpoint_overrides_the_fresh_start(tmp_path):
    args = ns(load=str(tmp_path / "c"), save=str(tmp_path / "c"), exit_on_missing_checkpoint=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(args)


def test_tracker_iteration_is_returned(tmp_path):
    layout.write_tracker(tmp_path, 7)
    assert find_checkpoint(ns(load=str(tmp_path))) == 7


def test_parallel_mismatch_names_both_and_the_reshard_command():
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_args(ns(tensor_model_parallel_size=2), ns(tensor_model_parallel_size=1), "ckpt")
    assert "TP=1 PP=1" in str(err.value) and "--target-tensor-parallel-size 2" in str(err.value)


def test_shape_mismatch_lists_the_flags():
    with pytest.raises(CheckpointError, match=r"--hidden-size 64 \(checkpoint: 128\)"):
        check_checkpoint_args(ns(), ns(hidden_size=128), "ckpt")


def test_padded_vocab_is_adopted_or_named():
    args = ns()
    adopt_padded_vocab(args, ns(padded_vocab_size=152064), 151665, "ckpt")
    assert args.padded_vocab_size == 152064
    with pytest.raises(CheckpointError, match="pass --padded-vocab-size 152064"):
        adopt_padded_vocab(ns(padded_vocab_size=151936), ns(padded_vocab_size=152064), 151665, "ckpt")
    with pytest.raises(CheckpointError, match="tokenizer has 200 tokens"):
        adopt_padded_vocab(ns(), ns(padded_vocab_size=128), 200, "ckpt")


def test_vocab_padding_follows_megatron():
    assert padded_vocab_size(151665, ns(tensor_model_parallel_size=2)) == 151808
    with pytest.raises(Exception, match="smaller than the tokenizer"):
        padded_vocab_size(300, ns(padded_vocab_size=256))


def test_saved_args_load_with_weights_only(tmp_path):
    args = ns(params_dtype=torch.bfloat16, hf_config={"a": [1, 2]}, fn=len, obj=object())
    path = tmp_path / "s.pt"
    torch.save({"args": args_to_save(args)}, path)
    loaded = layout.safe_torch_load(path)["args"]
    assert loaded.params_dtype == torch.bfloat16 and loaded.hf_config == {"a": [1, 2]}
    assert not hasattr(loaded, "fn") and not hasattr(loaded, "obj")


class _Foreign:
    pass


def test_foreign_classes_in_a_checkpoint_are_a_clear_error(tmp_path):
    from mindspeed_llm.training.checkpointing import load_rank_file

    path = tmp_path / "model_optim_rng.pt"
    torch.save({"args": argparse.Namespace(thing=_Foreign())}, path)
    with pytest.raises(CheckpointError, match="not on the safe-load allow-list.*register_safe_globals"):
        load_rank_file(str(path))
