"""The typed configuration: every flag in one group, frozen groups, metadata-driven checkpoint and megatron
lists."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from mindspeed_llm.config.flags import add_inference_args, build_parser, parse_args, parser_dests
from mindspeed_llm.config.groups import (
    GROUPS,
    LAUNCH_ONLY,
    InferenceGroup,
    RunConfig,
    checked_model_settings,
    checkpoint_settings,
    lora_dests,
    transformer_config,
)
from mindspeed_llm.config.namespace import build_namespace, thawed
from mindspeed_llm.config.validate import check_inference_args, validate_args
from tests.config.launch import plan_for
from tests.conftest import REPO_ROOT

BASE = (
    "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr 1e-3 "
    "--swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path "
    "d_text_document"
)


def _homes() -> dict[str, list[str]]:
    """Destination -> the places holding it (group names, 'lora', 'launch')."""
    homes: dict[str, list[str]] = {}
    for name, cls in GROUPS:
        for f in dataclasses.fields(cls):
            homes.setdefault(f.name, []).append(name)
    for f in dataclasses.fields(InferenceGroup):
        homes.setdefault(f.name, []).append("inference")
    for dest in lora_dests():
        homes.setdefault(dest, []).append("lora")
    for dest in LAUNCH_ONLY:
        homes.setdefault(dest, []).append("launch")
    return homes


def test_every_flag_belongs_to_exactly_one_group():
    homes = _homes()
    assert not {d: h for d, h in homes.items() if len(h) > 1}, "a destination in two groups"
    dests = set(parser_dests(add_inference_args(build_parser())))
    assert dests == set(homes), (f"flags in no group: {sorted(dests - set(homes))}; "
                                 f"group fields no flag fills: {sorted(set(homes) - dests)}")


def test_the_groups_hold_every_value_and_the_namespace_gives_them_back():
    args = validate_args(parse_args((BASE + " --bf16 --lora-target-modules linear_qkv").split()), 1)
    config = RunConfig.from_args(args)
    assert (
        config.extra == {}
        and config.inference is None
        and config.lora["lora_target_modules"] == ("linear_qkv",)
    )
    assert (
        config.model.hidden_size == 64
        and config.precision.bf16
        and config.data.data_path == ("d_text_document",)
    )
    assert vars(build_namespace(config)) == {**vars(args), "_frozen": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.hidden_size = 32
    with pytest.raises(TypeError):
        config.lora["lora_r"] = 8  # a read-only mapping


def test_an_extra_args_provider_keeps_its_flags_in_extra():
    def provider(parser):
        parser.add_argument("--my-flag", type=int, default=3)
        return parser

    config = RunConfig.from_args(validate_args(parse_args(BASE.split(), provider), 1))
    assert dict(config.extra) == {"my_flag": 3} and build_namespace(config).my_flag == 3


def test_inference_flags_are_their_own_group():
    argv = [
        "--num-layers",
        "2",
        "--hidden-size",
        "64",
        "--num-attention-heads",
        "4",
        "--max-position-embeddings",
        "64",
        "--swiglu",
        "--disable-bias-linear",
        "--load",
        "/ckpt",
        "--tokenizer-name-or-path",
        "/tok",
        "--prompt",
        "hi",
        "--prompt",
        "there",
    ]
    config = RunConfig.from_args(check_inference_args(parse_args(argv, add_inference_args), 1))
    assert config.inference.prompt == ("hi", "there") and config.inference.task == ("greedy",)
    assert config.extra == {} and build_namespace(config).prompt == ["hi", "there"]


def test_checkpoint_lists_follow_the_settings_metadata():
    """The lists --use-checkpoint-args and the launch-vs-checkpoint check read, as written out at 53e5dc2."""
    assert set(checkpoint_settings("fill")) == {
        "num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads", "kv_channels",
        "max_position_embeddings", "padded_vocab_size"}
    assert set(checkpoint_settings("force")) == {
        "num_query_groups",
        "group_query_attention",
        "position_embedding_type",
        "use_rotary_position_embeddings",
        "rotary_base",
        "rotary_percent",
        "add_qkv_bias",
        "qk_layernorm",
        "swiglu",
        "untie_embeddings_and_output_weights",
        "normalization",
        "norm_epsilon",
        "attention_dropout",
        "hidden_dropout",
        "rope_scaling_type",
        "rope_scaling_factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
        "num_experts",
        "moe_router_topk",
        "moe_ffn_hidden_size",
        "moe_router_pre_softmax",
        "moe_shared_expert_intermediate_size",
        "moe_shared_expert_gate",
        "moe_layer_freq",
        "moe_grouped_gemm",
        "disable_bias_linear",
    }
    assert checked_model_settings() == (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "kv_channels",
        "add_qkv_bias",
        "qk_layernorm",
        "untie_embeddings_and_output_weights",
        "position_embedding_type",
        "rotary_base",
        "rotary_percent",
        "normalization",
        "norm_epsilon",
        "swiglu",
        "num_experts",
        "moe_router_topk",
        "moe_ffn_hidden_size",
        "moe_router_pre_softmax",
        "moe_shared_expert_intermediate_size",
        "moe_shared_expert_gate",
        "moe_layer_freq",
        "moe_grouped_gemm",
    )


def test_settings_marked_for_megatron_reach_its_transformer_config():
    args = validate_args(
        parse_args(
            (
                BASE + " --init-method-std 0.05 --hidden-dropout 0.25 --attention-softmax-in-fp32 "
                "--use-cpu-initialization"
            ).split()
        ),
        1,
    )
    config = transformer_config(*plan_for(args))
    assert (config.init_method_std, config.hidden_dropout, config.attention_softmax_in_fp32) == (
        0.05,
        0.25,
        True,
    )
    assert config.use_cpu_initialization


def test_thawed_values_are_what_argparse_gives():
    assert thawed(("a", ("b",))) == ["a", ["b"]]
    assert thawed(RunConfig.from_args(validate_args(parse_args(BASE.split()), 1)).data.data_path) == [
        "d_text_document"
    ]


def test_config_modules_import_no_torch():
    """``--help`` and a refused flag answer before the heavy imports: the config modules load none of them."""
    code = ("MINDSPEED_LLM_LATE_PATCHES = True\nimport sys\n"
            "import mindspeed_llm.config.flags, mindspeed_llm.config.validate, mindspeed_llm.config.groups\n"
            "import mindspeed_llm.config.plan, mindspeed_llm.config.namespace, mindspeed_llm.config.paths\n"
            "print(sorted(m for m in ('torch', 'megatron', 'transformers') if m in sys.modules))\n")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
