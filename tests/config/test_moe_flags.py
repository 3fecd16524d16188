"""Mixture-of-experts flags: Megatron-LM's and MindSpeed-LLM's spellings, the rules, and what reaches
megatron-core's TransformerConfig, its process groups and the checkpoint record."""

from __future__ import annotations

import pytest

from mindspeed_llm.config.flags import ArgumentError, kernel_noop_flags
from mindspeed_llm.config.groups import RunConfig, transformer_config
from tests.config.launch import plan_for, validated

BASE = (
    "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr 1e-3 "
    "--swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path "
    "d_text_document"
)
MOE = BASE + " --num-experts 8 --moe-router-topk 2"


def test_mindspeed_spellings_fold_into_megatron_lms():
    args = validated(MOE + " --moe-intermediate-size 32 --n-shared-experts 2 --shared-expert-gate "
                           "--first-k-dense-replace 1 --moe-token-dispatcher-type alltoall_seq "
                           "--moe-permutation-async-comm --norm-topk-prob")
    assert args.moe_ffn_hidden_size == 32
    assert args.moe_shared_expert_intermediate_size == 64 and args.moe_shared_expert_gate
    assert args.moe_layer_freq == [0, 1, 1, 1]
    assert args.moe_token_dispatcher_type == "alltoall"
    assert kernel_noop_flags(args, "cpu") == ["--moe-permutation-async-comm"]


@pytest.mark.parametrize("freq, first_k, expected", [
    ("1", None, [1, 1, 1, 1]), ("-1", None, [1, 1, 1, 1]), ("2", None, [1, 0, 1, 0]),
    ("2", "1", [0, 0, 1, 0]), ("([0]*2+[1]*2)", None, [0, 0, 1, 1]), ("[1,0,1,1]", None, [1, 0, 1, 1]),
    ("1", "-1", [1, 1, 1, 1]), ("[1,0,1,1]", "-1", [1, 0, 1, 1]),  # MindSpeed-LLM's -1: no dense layers
])
def test_moe_layer_freq_as_megatron_lm_reads_it(freq, first_k, expected):
    extra = f" --moe-layer-freq {freq}" + (f" --first-k-dense-replace {first_k}" if first_k else "")
    assert validated(MOE + extra).moe_layer_freq == expected


@pytest.mark.parametrize("extra, words", [
    (" --moe-router-topk 9", "--moe-router-topk 9"),
    (" --expert-model-parallel-size 3", "divisible by --expert-model-parallel-size 3"),
    (" --norm-topk-prob --moe-router-pre-softmax", "give one"),
    (" --shared-expert-gate", "--shared-expert-gate gates a shared expert"),
    (" --n-shared-experts 1 --moe-ffn-hidden-size 32 --moe-shared-expert-intermediate-size 48",
     "contradicts"),
    (" --moe-token-dispatcher-type flex", "flex needs DeepEP"),
    (" --moe-layer-freq [1,1]", "2 entries for --num-layers 4"),
    (" --moe-layer-freq [1,1,1,1] --first-k-dense-replace 1", "--first-k-dense-replace with a"),
    (" --moe-layer-freq 0", "--moe-layer-freq 0"),
    (" --first-k-dense-replace -2", "--first-k-dense-replace -2 must be between 0"),
    (" --moe-ffn-hidden-size 32 --expert-tensor-parallel-size 3",
     "--expert-tensor-parallel-size 3 must divide"),
])
def test_bad_moe_launches_are_refused_with_one_line(extra, words):
    with pytest.raises(ArgumentError, match=words.replace("[", r"\[").replace("+", r"\+")):
        validated(MOE + extra)


def test_expert_layout_must_fit_the_world():
    with pytest.raises(ArgumentError, match="--expert-model-parallel-size 4 x --pipeline-model-parallel"):
        validated(MOE + " --expert-model-parallel-size 4", world=2)
    with pytest.raises(ArgumentError, match="--tensor-model-parallel-size 2 needs --sequence-parallel"):
        validated(MOE + " --tensor-model-parallel-size 2", world=2)


def test_generation_and_evaluation_run_moe_at_tp2_without_sequence_parallelism(tmp_path):
    """Training needs --sequence-parallel for MoE at TP > 1 (above); inference.py and evaluation.py refuse it
    and accept the launch without it (megatron-core's MoE layer in eval mode)."""
    from mindspeed_llm.config.flags import add_inference_args, parse_args
    from mindspeed_llm.config.validate import check_evaluation_args, check_inference_args
    from mindspeed_llm.evaluation.config import add_evaluation_args

    model = MOE.replace(" --data-path d_text_document", "").replace(
        "--tokenizer-type NullTokenizer --vocab-size 100", "--tokenizer-type PretrainedFromHF "
        "--tokenizer-name-or-path tok") + " --tensor-model-parallel-size 2 --expert-model-parallel-size 2 " \
        "--load ckpt"
    args = check_inference_args(parse_args(f"{model} --prompt w5".split(), add_inference_args), 4)
    assert (args.tensor_model_parallel_size, args.expert_model_parallel_size) == (2, 2)
    assert not args.sequence_parallel and args.expert_tensor_parallel_size == 2
    args = check_evaluation_args(parse_args(f"{model} --task mmlu --task-data-path {tmp_path}".split(),
                                            add_evaluation_args), 4)
    assert not args.sequence_parallel
    with pytest.raises(ArgumentError, match="--sequence-parallel is not supported for generation"):
        check_inference_args(parse_args(f"{model} --prompt w5 --sequence-parallel".split(),
                                        add_inference_args), 4)


@pytest.mark.parametrize("extra", [" --expert-model-parallel-size 2", " --moe-grouped-gemm",
                                   " --shared-expert-gate", " --moe-intermediate-size 32",
                                   " --first-k-dense-replace 1", " --moe-aux-loss-coeff 0.01"])
def test_moe_flags_without_experts_are_refused(extra):
    with pytest.raises(ArgumentError, match="only apply to mixture-of-experts models: add --num-experts"):
        validated(BASE + extra, world=2)


def test_moe_settings_reach_transformer_config():
    args = validated(MOE + " --moe-ffn-hidden-size 32 --moe-shared-expert-intermediate-size 48 "
                           "--moe-shared-expert-gate --moe-router-pre-softmax --moe-layer-freq ([0]+[1]*3) "
                           "--moe-router-load-balancing-type seq_aux_loss --moe-aux-loss-coeff 0.01 "
                           "--moe-z-loss-coeff 0.001 --moe-token-dispatcher-type alltoall --moe-grouped-gemm "
                           "--expert-model-parallel-size 2 --tensor-model-parallel-size 2 "
                           "--expert-tensor-parallel-size 1 --sequence-parallel", world=4)
    config, plan = plan_for(args, world=4)
    tc = transformer_config(config, plan)
    assert (tc.num_moe_experts, tc.moe_router_topk, tc.moe_ffn_hidden_size) == (8, 2, 32)
    assert (tc.moe_shared_expert_intermediate_size, tc.moe_shared_expert_gate) == (48, True)
    assert tc.moe_router_pre_softmax and list(tc.moe_layer_freq) == [0, 1, 1, 1]
    assert (tc.moe_router_load_balancing_type, tc.moe_aux_loss_coeff, tc.moe_z_loss_coeff) == (
        "seq_aux_loss", 0.01, 0.001)
    assert (tc.moe_token_dispatcher_type, tc.moe_grouped_gemm) == ("alltoall", True)
    assert (tc.expert_model_parallel_size, tc.expert_tensor_parallel_size) == (2, 1)
    assert plan.model_config.architecture == "MixtralForCausalLM"


def test_expert_tensor_parallel_defaults_to_tp_and_dense_models_keep_no_moe():
    args = validated(MOE + " --tensor-model-parallel-size 2 --sequence-parallel", world=2)
    assert args.expert_tensor_parallel_size == 2
    dense = transformer_config(*plan_for(validated(BASE)))
    assert dense.num_moe_experts is None and dense.expert_model_parallel_size == 1


def test_the_record_keeps_the_moe_settings_and_the_expert_layout():
    from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, LayoutRecord, ModelRecord

    args = validated(MOE + " --add-qkv-bias --n-shared-experts 1 --shared-expert-gate "
                           "--moe-router-pre-softmax "
                           "--moe-grouped-gemm")
    config, plan = plan_for(args)
    assert plan.model_config.architecture == "Qwen2MoeForCausalLM"
    model = ModelRecord.from_model_config(plan.model_config, padded_vocab_size=128,
                                          make_vocab_size_divisible_by=128, moe_grouped_gemm=True)
    record = CheckpointRecord(model=model, layout=LayoutRecord(tp=1, pp=1, ep=2, etp=1))
    back = CheckpointRecord.from_dict(record.to_dict(), "x")
    assert back == record
    settings = back.model.settings
    assert (settings["num_experts"], settings["moe_router_topk"]) == (8, 2)
    assert settings["moe_ffn_hidden_size"] == 192
    assert settings["moe_shared_expert_intermediate_size"] == 192 and settings["moe_shared_expert_gate"]
    assert settings["moe_router_pre_softmax"] and settings["moe_grouped_gemm"]
    assert settings["moe_layer_freq"] == [1, 1, 1, 1]
    megatron = record.megatron_args()
    assert (megatron.expert_model_parallel_size, megatron.expert_tensor_parallel_size) == (2, 1)
    assert CheckpointRecord.from_megatron_args(megatron).layout.ep == 2
    # What a training run's own args record: the same settings, checked against a later launch.
    run_args = RunConfig.from_args(args).values()
    assert {k: run_args[k] for k in ("num_experts", "moe_grouped_gemm")} == {"num_experts": 8,
                                                                             "moe_grouped_gemm": True}
