"""Checkpoint checks before the model exists: --load folders, launch vs checkpoint, padded vocabulary,
args."""

from __future__ import annotations

import argparse

import pytest
import torch

from mindspeed_llm.convert.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.launch import adopt_padded_vocab, check_checkpoint_args
from mindspeed_llm.runtime.checkpoint.locate import find_checkpoint
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, file_header, plain_args
from mindspeed_llm.runtime.model import padded_vocab_size


def recorded(**kw) -> CheckpointRecord:
    """The record of a checkpoint whose Megatron args are :func:`ns` (``kw`` changed)."""
    return CheckpointRecord.from_megatron_args(ns(**kw))


def ns(**kw):
    base = dict(
        load=None,
        save=None,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        num_layers=4,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        add_qkv_bias=True,
        untie_embeddings_and_output_weights=True,
        num_layer_list=None,
        padded_vocab_size=None,
        make_vocab_size_divisible_by=128,
    )
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
        check_checkpoint_args(
            ns(tensor_model_parallel_size=2), recorded(tensor_model_parallel_size=1), "ckpt"
        )
    assert "TP=1 PP=1" in str(err.value) and "--target-tensor-parallel-size 2" in str(err.value)


def test_shape_mismatch_lists_the_flags():
    with pytest.raises(CheckpointError, match=r"--hidden-size 64 \(checkpoint: 128\)"):
        check_checkpoint_args(ns(), recorded(hidden_size=128), "ckpt")


def test_padded_vocab_is_adopted_or_named():
    assert adopt_padded_vocab(ns(), recorded(padded_vocab_size=152064).model, 151665, "ckpt") == 152064
    assert adopt_padded_vocab(ns(), argparse.Namespace(), 151665, "ckpt") is None  # nothing recorded
    with pytest.raises(CheckpointError, match="pass --padded-vocab-size 152064"):
        adopt_padded_vocab(
            ns(padded_vocab_size=151936), recorded(padded_vocab_size=152064).model, 151665, "ckpt"
        )
    with pytest.raises(CheckpointError, match="tokenizer has 200 tokens"):
        adopt_padded_vocab(ns(), recorded(padded_vocab_size=128).model, 200, "ckpt")


def test_vocab_padding_follows_megatron():
    assert padded_vocab_size(151665, ns(tensor_model_parallel_size=2)) == 151808
    with pytest.raises(Exception, match="smaller than the tokenizer"):
        padded_vocab_size(300, ns(padded_vocab_size=256))
    # The checkpoint's padded size is the run's, checked as --padded-vocab-size would be.
    assert padded_vocab_size(151665, ns(tensor_model_parallel_size=2), recorded=152064) == 152064
    with pytest.raises(
        Exception, match="--padded-vocab-size 152065 is not divisible by --tensor-model-parallel-size 2"
    ):
        padded_vocab_size(151665, ns(tensor_model_parallel_size=2), recorded=152065)


def test_saved_args_load_with_weights_only(tmp_path):
    args = ns(params_dtype=torch.bfloat16, hf_config={"a": [1, 2]}, fn=len, obj=object())
    path = tmp_path / "s.pt"
    torch.save({"args": plain_args(args)}, path)
    loaded = layout.safe_torch_load(path)["args"]
    assert loaded.params_dtype == torch.bfloat16 and loaded.hf_config == {"a": [1, 2]}
    assert not hasattr(loaded, "fn") and not hasattr(loaded, "obj")


class _Foreign:
    pass


def test_foreign_classes_in_a_checkpoint_are_a_clear_error(tmp_path):
    from mindspeed_llm.runtime.checkpoint.layout import load_rank_file

    path = tmp_path / "model_optim_rng.pt"
    torch.save({"args": argparse.Namespace(thing=_Foreign())}, path)
    with pytest.raises(CheckpointError, match="not on the safe-load allow-list.*register_safe_globals"):
        load_rank_file(str(path))


# ---- the checkpoint is the truth about the model -----------------------------------------------------------
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
LAUNCH = (
    "--num-layers 4 --hidden-size 64 --ffn-hidden-size 96 --num-attention-heads 4 --group-query-attention "
    "--num-query-groups 2 --swiglu --disable-bias-linear --untie-embeddings-and-output-weights --seq-length "
    "32 --train-iters 2 --lr 1e-3 --tokenizer-type NullTokenizer --vocab-size 127 --data-path d_text_document"
)
MATCHING = " --rotary-base 1000000 --norm-epsilon 1e-6 --rope-scaling-type llama3 --rope-scaling-factor 8"


def _converted_args():
    """``args`` as convert_ckpt.py hf -> mg records them for a Llama-3.1-style config (real converter
    code)."""
    from mindspeed_llm.convert.convert import ConvertOptions, checkpoint_record, provenance_args
    from mindspeed_llm.models.families import ModelConfig
    from tests.checkpoint.tiny_models import tiny_hf_config

    cfg = ModelConfig.from_hf_config(
        tiny_hf_config(
            "llama",
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            rope_scaling=dict(LLAMA31_ROPE),
            tie_word_embeddings=False,
        )
    )
    opts = ConvertOptions("hf", "mg", "hf_dir", "mg_dir")
    record = checkpoint_record(cfg, tp=1, pp=1, counts=[4], padded=128, opts=opts)
    return file_header(record, provenance_args(opts))["args"]


def _converted():
    """The record the converted file's header reads back as."""
    return CheckpointRecord.from_megatron_args(_converted_args())


def _launch(flags: str):
    from tests.config.launch import validated

    return validated(flags, 1)


def test_converter_records_rope_scaling_and_a_matching_launch_passes():
    ckpt = _converted_args()
    assert (ckpt.rope_scaling_type, ckpt.rope_scaling_factor, ckpt.original_max_position_embeddings) == \
        ("llama3", 8.0, 8192)
    check_checkpoint_args(_launch(LAUNCH + MATCHING), _converted(), "ckpt")


def test_launch_contradicting_rope_and_norm_is_refused_in_one_line():
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_args(_launch(LAUNCH + " --rope-scaling-type linear --rope-scaling-factor 8"),
                              _converted(), "the checkpoint c (iteration 1)")
    text = str(err.value)
    assert "\n" not in text
    for part in ("--rotary-base 10000.0 (checkpoint: 1000000.0)", "--norm-epsilon 1e-05 (checkpoint: 1e-06)",
                 "--rope-scaling-type linear (checkpoint: llama3)", "--use-checkpoint-args"):
        assert part in text, text
    with pytest.raises(CheckpointError, match=r"--rope-scaling-factor 4.0 \(checkpoint: 8.0\)"):
        check_checkpoint_args(_launch(LAUNCH + MATCHING.replace("factor 8", "factor 4")), _converted(), "c")


def test_rope_scaling_flags_left_out_take_the_recorded_scaling():
    """No --rope-scaling-type: the checkpoint's scaling is the run's (ModelGroup.rope_scaling,
    config/groups.py)."""
    from mindspeed_llm.models.families import ModelConfig
    from tests.config.launch import plan_for

    ckpt = _converted_args()
    args = _launch(LAUNCH + " --rotary-base 1000000 --norm-epsilon 1e-6")
    check_checkpoint_args(args, CheckpointRecord.from_megatron_args(ckpt), "c")
    config = plan_for(args, base=ModelConfig.from_hf_config(dict(ckpt.hf_config)))[1].model_config
    assert config.rope_scaling == LLAMA31_ROPE


def test_older_conversions_are_checked_through_their_hf_config():
    ckpt = _converted_args()
    for name in ("rope_scaling_type", "rope_scaling_factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings", "rotary_base"):
        delattr(ckpt, name)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_args(
            _launch(LAUNCH + " --norm-epsilon 1e-6 --rope-scaling-type linear --rope-scaling-factor 8"),
            CheckpointRecord.from_megatron_args(ckpt),
            "c",
        )
    assert (
        "--rotary-base 10000.0 (checkpoint: 1000000.0); --rope-scaling-type linear (checkpoint: llama3)"
        in str(err.value)
    )


def test_use_checkpoint_args_fills_the_model_from_the_checkpoint(tmp_path):
    from mindspeed_llm.config.flags import parse_args
    from mindspeed_llm.config.validate import take_checkpoint_values, validate_args
    from mindspeed_llm.runtime.checkpoint.launch import load_args_from_checkpoint

    layout.save_rank_state(tmp_path, 1, 0, 0, 1, {"args": _converted_args(), "iteration": 1})
    layout.write_tracker(tmp_path, 1)
    flags = (
        "--seq-length 32 --train-iters 2 --lr 1e-3 --tokenizer-type NullTokenizer --vocab-size 127 "
        f"--data-path d_text_document --use-checkpoint-args --load {tmp_path} --hidden-size 32 "
        "--norm-epsilon 1e-5"
    )
    args = parse_args(flags.split())
    taken = load_args_from_checkpoint(args)
    assert (
        "hidden_size" not in taken and taken["norm_epsilon"] == 1e-6
    )  # fill only what is unset; force the rest
    assert vars(args)["num_layers"] is None  # returned, not written: config/validate.py takes them
    args = validate_args(take_checkpoint_values(args, taken), 1)
    assert (args.num_layers, args.ffn_hidden_size, args.num_query_groups, args.rotary_base) == (4, 96, 2, 1e6)
    assert (args.rope_scaling_type, args.rope_scaling_factor, args.norm_epsilon) == ("llama3", 8.0, 1e-6)
    assert args.untie_embeddings_and_output_weights and args.swiglu and args.disable_bias_linear
    assert args.hidden_size == 32  # Megatron-LM fills --hidden-size only when the launch left it unset
    with pytest.raises(CheckpointError, match=r"--hidden-size 32 \(checkpoint: 64\)"):
        check_checkpoint_args(args, _converted(), "c")


def test_ckpt_step_picks_an_iteration_or_names_the_ones_there(tmp_path):
    layout.write_tracker(tmp_path, 6)
    for it in (3, 6):
        (tmp_path / layout.iteration_dir_name(it)).mkdir()
    assert find_checkpoint(ns(load=str(tmp_path), ckpt_step=3)) == 3
    with pytest.raises(CheckpointError, match=r"--ckpt-step 4: .* \(there: iter_0000003, iter_0000006\)"):
        find_checkpoint(ns(load=str(tmp_path), ckpt_step=4))
