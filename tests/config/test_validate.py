"""Megatron flag parsing and validation: completed flags, the derived plan and the errors a user can act
on."""

from __future__ import annotations

import json

import pytest
import torch

from mindspeed_llm.config.flags import ArgumentError, fallback_option_note, kernel_noop_flags, parse_args
from mindspeed_llm.config.groups import RunConfig, transformer_config
from mindspeed_llm.config.plan import parallel_layout
from mindspeed_llm.config.validate import validate_args
from tests.config.launch import plan_for

BASE = (
    "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr 1e-3 "
    "--swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path "
    "d_text_document"
)


def args_for(extra: str = "", world: int = 1):
    return validate_args(parse_args((BASE + " " + extra).split()), world)


def layout_for(extra: str = "", world: int = 1):
    return parallel_layout(RunConfig.from_args(args_for(extra, world)), world)


def model_config_from_args(args, vocab_rows, base=None):
    """Our ModelConfig of validated flags (as the runtime builds it)."""
    config = RunConfig.from_args(args)
    return config.model.model_config(vocab_rows, config.precision.params_dtype, base)


def megatron_config(args, world=1, vocab_rows=101):
    """megatron-core's TransformerConfig of validated flags."""
    return transformer_config(*plan_for(args, world, vocab_rows=vocab_rows))


def test_data_parallel_size_and_micro_batches_are_derived():
    extra = "--tensor-model-parallel-size 2 --micro-batch-size 2 --global-batch-size 16"
    layout = layout_for(extra, world=8)
    assert (layout.data_parallel_size, layout.num_microbatches) == (4, 2)
    args = args_for(extra, world=8)
    assert args.ffn_hidden_size == 192  # Megatron's SwiGLU default: 2/3 of 4h rounded up to 64
    assert args.num_query_groups == 4 and args.kv_channels == 16


@pytest.mark.parametrize(
    "extra, world, words",
    [
        ("--micro-batch-size 2 --global-batch-size 6", 2, ["--global-batch-size 6", "multiple of 4"]),
        ("--pipeline-model-parallel-size 3", 3, ["--num-layers 4", "--num-layer-list"]),
        ("--tensor-model-parallel-size 2", 3, ["world size 3", "multiple of 2"]),
        ("--fp16", 1, ["--bf16"]),
        ("--ckpt-format zarr", 1, ["--ckpt-format torch", "torch_dist"]),
        (
            "--ckpt-format torch_dist --save /x --no-shared-storage",
            1,
            ["--no-shared-storage", "--ckpt-format torch"],
        ),
        ("--context-parallel-size 2", 1, ["--context-parallel-size"]),
        ("--transformer-impl transformer_engine", 1, ["--transformer-impl local"]),
        ("--normalization LayerNorm", 1, ["RMSNorm"]),
        ("--num-layer-list 1,2", 2, ["--num-layer-list 1,2", "add up to --num-layers 4"]),
        ("--overlap-param-gather --overlap-grad-reduce", 1, ["--use-distributed-optimizer"]),
        ("--reset-attention-mask", 1, ["--reset-attention-mask", "posttrain_gpt.py --stage sft"]),
        ("--max-position-embeddings 16", 1, ["--seq-length 32", "--max-position-embeddings 16"]),
        (
            "--spec mindspeed_llm.tasks.models.spec.deepseek_spec layer_spec",
            1,
            ["--spec mindspeed_llm.tasks.models.spec.deepseek_spec layer_spec", "local |", "qwen3_spec"],
        ),
        ("--spec", 1, ["--spec (empty)"]),
        ("--reuse-fp32-param --bf16", 1, ["--reuse-fp32-param", "--use-distributed-optimizer"]),
        (
            "--override-opt_param-scheduler --use-checkpoint-opt_param-scheduler",
            1,
            ["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"],
        ),
    ],
)
def test_invalid_launches_name_the_flag_and_the_fix(extra, world, words):
    with pytest.raises(ArgumentError) as err:
        args_for(extra, world)
    for word in words:
        assert word in str(err.value)


def test_context_parallel_divides_the_world_and_leaves_the_rest_to_data_parallel():
    extra = (
        "--tensor-model-parallel-size 2 --context-parallel-size 2 --context-parallel-algo ulysses_cp_algo "
        "--attention-dropout 0"
    )
    assert (
        layout_for(extra, world=8).data_parallel_size,
        args_for(extra, world=8).context_parallel_size,
    ) == (2, 2)
    # Ulysses attends over whole sequences per head: megatron's attention dropout applies (default 0.1).
    assert (
        args_for(
            "--context-parallel-size 2 --context-parallel-algo ulysses_cp_algo", world=2
        ).attention_dropout
        == 0.1
    )


HYBRID = "--context-parallel-algo hybrid_cp_algo --attention-dropout 0 --context-parallel-size "


def test_ring_context_parallel_takes_attention_dropout():
    # The ring draws position-keyed masks: megatron's default attention dropout (0.1) is accepted.
    assert (
        args_for(
            "--context-parallel-size 2 --context-parallel-algo megatron_cp_algo", world=2
        ).attention_dropout
        == 0.1
    )
    hybrid = HYBRID.replace("--attention-dropout 0", "") + "4 --ulysses-degree-in-cp 2"
    assert args_for(hybrid, world=4).attention_dropout == 0.1  # Ulysses around the ring: the same masks


@pytest.mark.parametrize(
    "extra, world, words",
    [
        (
            "--context-parallel-size 2 --attention-dropout 0",
            3,
            ["world size 3", "--context-parallel-size 2", "multiple of 2"],
        ),
        (
            "--context-parallel-size 2 --seq-length 30 --max-position-embeddings 32 --attention-dropout 0",
            2,
            ["--seq-length 30", "2 x --context-parallel-size 2", "multiple of 4"],
        ),
        (
            "--context-parallel-size 2 --attention-dropout 0 --is-instruction-dataset "
            "--no-pad-to-seq-lengths --pad-to-multiple-of 2",
            2,
            ["--pad-to-multiple-of 2", "--context-parallel-size 2", "multiple of 4"],
        ),
        (
            "--context-parallel-size 4 --context-parallel-algo ulysses_cp_algo --tensor-model-parallel-size "
            "2 --attention-dropout 0",
            8,
            ["ulysses_cp_algo", "(2)", "--context-parallel-size 4", "megatron_cp_algo"],
        ),
    ],
)
def test_context_parallel_refusals_name_the_flag_and_the_fix(extra, world, words):
    with pytest.raises(ArgumentError) as err:
        args_for(extra, world)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "algo", ["megatron_cp_algo", "ulysses_cp_algo", "hybrid_cp_algo --ulysses-degree-in-cp 2"]
)
def test_context_parallel_takes_packed_samples(algo):
    # --reset-attention-mask (packed SFT data) with every CP algorithm; documents cross the CP split; with
    # megatron's default attention dropout (0.1) too: the packed masks are position-keyed like the ring's.
    args = args_for(
        f"--context-parallel-size 4 --context-parallel-algo {algo} --stage sft --reset-attention-mask",
        world=4,
    )
    assert args.reset_attention_mask and args.reset_position_ids and args.context_parallel_size == 4
    assert args.attention_dropout == 0.1


def test_hybrid_cp_sets_megatrons_hierarchical_sizes():
    extra = (
        "--tensor-model-parallel-size 2 --context-parallel-size 4 --context-parallel-algo hybrid_cp_algo "
        "--ulysses-degree-in-cp 2 --attention-dropout 0"
    )
    args = args_for(extra, world=16)
    assert (layout_for(extra, world=16).data_parallel_size, args.ulysses_degree_in_cp) == (2, 2)
    config = megatron_config(args, world=16)
    # megatron-core's hierarchical CP: level 0 all-to-all (Ulysses), level 1 p2p (ring).
    assert config.cp_comm_type == "a2a+p2p" and config.hierarchical_context_parallel_sizes == [2, 2]




@pytest.mark.parametrize("extra, world, words", [
    (HYBRID + "4", 4, ["hybrid_cp_algo needs --ulysses-degree-in-cp"]),
    (HYBRID + "4 --ulysses-degree-in-cp 4", 4, ["--ulysses-degree-in-cp 4", "use ulysses_cp_algo"]),
    (HYBRID + "4 --ulysses-degree-in-cp 1", 4, ["--ulysses-degree-in-cp 1", "use megatron_cp_algo"]),
    (HYBRID + "8 --ulysses-degree-in-cp 3 --seq-length 48 --max-position-embeddings 48", 8,
     ["--ulysses-degree-in-cp 3", "divisor of 8 between 2 and 4"]),
    (HYBRID + "8 --ulysses-degree-in-cp 4 --tensor-model-parallel-size 2", 16,
     ["hybrid_cp_algo", "(2)", "--ulysses-degree-in-cp 4"]),
])
def test_hybrid_cp_refusals_name_the_flag_and_the_fix(extra, world, words):
    with pytest.raises(ArgumentError) as err:
        args_for(extra, world)
    for word in words:
        assert word in str(err.value)


def test_missing_required_flags_are_listed():
    with pytest.raises(ArgumentError, match="--train-iters"):
        validate_args(
            parse_args(
                "--num-layers 2 --hidden-size 8 --num-attention-heads 2 --seq-length 8 --lr 1".split()
            ),
            1,
        )


def test_tensorboard_dir_without_tensorboard_is_a_clear_error():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ArgumentError, match="pip install tensorboard"):
            args_for("--tensorboard-dir tb")
    else:
        assert args_for("--tensorboard-dir tb").tensorboard_dir == "tb"


def test_bf16_keeps_fp32_gradient_reduction():
    args = args_for("--bf16")
    assert plan_for(args)[1].params_dtype == torch.bfloat16 and args.accumulate_allreduce_grads_in_fp32
    assert plan_for(args_for())[1].params_dtype == torch.float32


def test_kernel_only_flags_are_reported_as_no_ops():
    args = args_for("--no-gradient-accumulation-fusion --no-masked-softmax-fusion --distributed-backend nccl "
                    "--initial-loss-scale 4096 --bf16")
    noops = kernel_noop_flags(args, "cpu")
    assert "--no-gradient-accumulation-fusion" in noops and "--no-masked-softmax-fusion" in noops
    assert any("initial-loss-scale" in n for n in noops) and any("distributed-backend" in n for n in noops)


def test_mindspeed_spec_and_ascend_options_are_accepted_with_their_meaning(tmp_path):
    qwen3 = "--spec mindspeed_llm.tasks.models.spec.qwen3_spec layer_spec"
    assert args_for(qwen3).spec == ["mindspeed_llm.tasks.models.spec.qwen3_spec", "layer_spec"]
    assert args_for("--spec local").spec == ["local"]
    # The spec names a family's layer: an HF folder of another family is refused (the one of Qwen3 is not).
    for arch, model_type in (("LlamaForCausalLM", "llama"), ("Qwen3ForCausalLM", "qwen3")):
        hf = tmp_path / model_type
        hf.mkdir()
        (hf / "config.json").write_text(json.dumps({"architectures": [arch]}))
        (hf / "model.safetensors").write_bytes(b"")
        if model_type == "qwen3":
            assert args_for(f"{qwen3} --load {hf}").model_type_hf == "qwen3"
            continue
        with pytest.raises(ArgumentError) as err:
            args_for(f"{qwen3} --load {hf}")
        assert "layer of qwen3 / qwen3-moe, not of --model-type-hf llama" in str(err.value)
    # MindSpeed's Ascend options: accepted, and the fallback said in one line naming each.
    args = args_for("--reuse-fp32-param --use-ascend-coc --bf16 --use-distributed-optimizer")
    note = fallback_option_note(args, "cpu")
    assert "\n" not in note and "--reuse-fp32-param (" in note and "--use-ascend-coc (" in note
    assert fallback_option_note(args_for("--bf16"), "cpu") is None


def test_transformer_config_follows_the_flags():
    args = args_for(
        "--group-query-attention --num-query-groups 2 --add-qkv-bias --bf16 --recompute-granularity full "
        "--recompute-method uniform --recompute-num-layers 1 --attention-dropout 0 --hidden-dropout 0 "
        "--cross-entropy-loss-fusion"
    )
    model = model_config_from_args(args, vocab_rows=101)
    config = megatron_config(args)
    assert (config.num_query_groups, config.add_qkv_bias, config.bf16) == (2, True, True)
    assert config.params_dtype == torch.bfloat16 and config.recompute_granularity == "full"
    assert config.cross_entropy_loss_fusion
    assert model.architecture == "Qwen2ForCausalLM" and model.tie_word_embeddings
    # Megatron-LM's --swiglu default: megatron's fused SwiGLU; its --no-bias-swiglu-fusion: the plain one.
    assert config.bias_activation_fusion
    args = args_for("--no-bias-swiglu-fusion")
    assert not megatron_config(args).bias_activation_fusion
    assert "--no-bias-swiglu-fusion" not in kernel_noop_flags(args, "cpu")


def test_megatron_spellings_of_the_resilience_flags():
    """Megatron-LM's names: NaN check on by default, the scheduler flags with their underscore, the signal
    flag."""
    args = args_for()
    assert args.check_for_nan_in_loss_and_grad and not args.exit_signal_handler
    assert not args.override_opt_param_scheduler and not args.use_checkpoint_opt_param_scheduler
    args = args_for(
        "--no-check-for-nan-in-loss-and-grad --exit-signal-handler --override-opt_param-scheduler"
    )
    assert (
        not args.check_for_nan_in_loss_and_grad
        and args.exit_signal_handler
        and args.override_opt_param_scheduler
    )
    assert args_for("--use-checkpoint-opt-param-scheduler").use_checkpoint_opt_param_scheduler
    assert args_for("--check-for-nan-in-loss-and-grad").check_for_nan_in_loss_and_grad


def test_rope_scaling_comes_from_the_checkpoint_and_flags_only_complete_it():
    """A recorded llama3 scaling is used as it is; MindSpeed's type+factor flags are completed from it; flags
    that describe another scaling, or llama3 parameters without --rope-scaling-type, are refused."""
    from mindspeed_llm.models.families import ModelConfig
    from tests.checkpoint.tiny_models import tiny_hf_config

    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    base = ModelConfig.from_hf_config(tiny_hf_config("llama", rope_scaling=scaling))
    assert model_config_from_args(args_for(), 100, base).rope_scaling == scaling
    completed = args_for("--rope-scaling-type llama3 --rope-scaling-factor 4")
    assert model_config_from_args(completed, 100, base).rope_scaling == scaling
    with pytest.raises(ArgumentError, match="--rope-scaling-type llama3 gives rope_scaling .* but the --load "
                                            "checkpoint records"):
        model_config_from_args(args_for("--rope-scaling-type llama3 --rope-scaling-factor 8"), 100, base)
    with pytest.raises(ArgumentError, match="need --rope-scaling-type llama3"):
        model_config_from_args(args_for("--original-max-position-embeddings 64"), 100, base)
    fresh = model_config_from_args(args_for("--rope-scaling-type llama3 --rope-scaling-factor 8"), 100)
    assert fresh.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert model_config_from_args(args_for("--qk-layernorm"), 100).architecture == "Qwen3ForCausalLM"


# ---- Megatron-LM flags: sample-based training, uneven first/last stages, refusals --------------------------
def test_train_samples_sets_the_iterations_as_megatron_does():
    flags = (
        BASE.replace("--train-iters 5", "--train-samples 50") + " --global-batch-size 8 --micro-batch-size 2 "
        "--lr-warmup-samples 16 --lr-decay-samples 40"
    ).split()
    args = validate_args(parse_args(flags), 2)
    assert args.train_iters == 6  # 50 // 8, Megatron-LM's update_train_iters
    assert (args.lr_warmup_samples, args.lr_decay_samples) == (16, 40)


@pytest.mark.parametrize(
    "extra, words",
    [
        ("--lr-warmup-samples 16", ["--lr-warmup-samples", "--train-samples"]),
        ("--lr-decay-samples 40", ["--lr-decay-samples", "--lr-decay-iters"]),
        ("--train-samples 40", ["exactly one of --train-iters N and --train-samples N"]),
        ("--dataloader-type cyclic", ["--dataloader-type cyclic", "single"]),
        (
            "--context-parallel-algo ulysses_cp_algo --ulysses-degree-in-cp 2",
            ["--ulysses-degree-in-cp", "hybrid_cp_algo"],
        ),
        ("--context-parallel-algo ring", ["--context-parallel-algo ring", "ulysses_cp_algo"]),
        ("--mock-data", ["one data source"]),
        ("--train-data-path t_text_document", ["one data source"]),
        ("--manual-gc-interval -1", ["--manual-gc-interval"]),
        ("--loss-compute-mode chunk --loss-chunk-size 0", ["--loss-chunk-size", "positive"]),
        ("--loss-compute-mode chunk --cross-entropy-loss-fusion",
         ["--loss-compute-mode chunk", "--cross-entropy-loss-fusion", "keep one"]),
    ],
)
def test_megatron_flags_refused_with_a_line(extra, words):
    with pytest.raises(ArgumentError) as err:
        args_for(extra)
    for word in words:
        assert word in str(err.value)


def test_sample_based_training_refuses_iteration_schedule_flags():
    flags = (BASE.replace("--train-iters 5", "--train-samples 40") + " --lr-warmup-iters 2").split()
    with pytest.raises(ArgumentError, match="--lr-warmup-iters go with --train-iters"):
        validate_args(parse_args(flags), 1)


def test_decoder_first_and_last_stage_layers_become_a_layer_list():
    layout = layout_for(
        "--num-layers 10 --pipeline-model-parallel-size 4 --decoder-first-pipeline-num-layers 1 "
        "--decoder-last-pipeline-num-layers 3",
        world=4,
    )
    assert layout.num_layer_list_parsed == (1, 3, 3, 3)
    layout = layout_for("--pipeline-model-parallel-size 2 --decoder-last-pipeline-num-layers 1", world=2)
    assert layout.num_layer_list_parsed == (3, 1)
    with pytest.raises(ArgumentError, match="cannot be split evenly"):
        args_for(
            "--num-layers 9 --pipeline-model-parallel-size 4 --decoder-first-pipeline-num-layers 2", world=4
        )


def test_per_split_data_paths_and_mock_data_replace_data_path():
    flags = BASE.replace("--data-path d_text_document", "--mock-data").split()
    assert validate_args(parse_args(flags), 1).mock_data
    flags = BASE.replace("--data-path d_text_document", "--train-data-path t_text_document").split()
    assert validate_args(parse_args(flags), 1).train_data_path == ["t_text_document"]


def test_the_runs_namespace_is_frozen_from_birth_and_carries_the_plan():
    from mindspeed_llm.config.namespace import FrozenArgsError, build_namespace

    config, plan = plan_for(
        args_for("--tensor-model-parallel-size 2 --global-batch-size 8", world=4), world=4
    )
    args = build_namespace(config, plan)
    with pytest.raises(FrozenArgsError, match="cannot set lr"):
        args.lr = 1.0
    assert args.lr == 1e-3 and args.data_parallel_size == 2 and args.num_microbatches == 4
    assert (
        args.padded_vocab_size == plan.padded_vocab_size == 128 and args.hf_architecture == "LlamaForCausalLM"
    )
    assert args.data_path == ["d_text_document"]  # lists, as argparse and Megatron-LM give them
    assert build_namespace(config).padded_vocab_size is None  # before the plan: the flag alone


def test_given_flags_are_told_apart_from_defaults():
    from mindspeed_llm.config.flags import given_flags

    given = given_flags((BASE + " --rotary-base 10000").split())
    assert "rotary_base" in given and "norm_epsilon" not in given and "seq_length" in given
