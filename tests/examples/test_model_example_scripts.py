"""Each model's example scripts agree with the model and with each other (dry runs, no training).

For every model: the hf->mcore script's flags parse and pass the converter's checks against the
model's real HF config (TP/PP divide heads, groups and layers; --model-type-hf and --add-qkv-bias
fit the architecture); the mcore->hf script converts what the pretrain script saves; the pretrain script's
flags parse and validate for its world size, describe the same architecture as config.json, and load the
converted checkpoint with the same TP/PP and padded vocabulary. Launchers are replaced by a
recorder of their arguments (a stand-in for `python`/`torchrun`, not for anything under test).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.validate import validate_args
from mindspeed_llm.convert.cli import build_parser, options_from_args
from mindspeed_llm.convert.convert import check_parallel, target_padded_vocab
from mindspeed_llm.models.families import ModelConfig, check_model_type_hf
from tests.conftest import HF_CONFIG_FIXTURES, REPO_ROOT, free_port

EX = "examples/mcore"
# Public Qwen2.5 shapes for the sizes without a fixture file (the 7B fixture's keys otherwise).
QWEN25_SHAPES = {
    "1point5b": dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "14b": dict(num_hidden_layers=48, hidden_size=5120, intermediate_size=13824, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "32b": dict(num_hidden_layers=64, hidden_size=5120, intermediate_size=27648, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "72b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=29568, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}

# model: (config.json source, hf2mcore, mcore2hf, pretrain)
MODELS = {
    "qwen2.5-0.5b": (
        "qwen2.5-0.5b.json",
        f"{EX}/qwen25/ckpt_convert_qwen25_0point5b_hf2mcore.sh",
        f"{EX}/qwen25/ckpt_convert_qwen25_0point5b_mcore2hf.sh",
        f"{EX}/qwen25/pretrain_qwen25_0point5b_32k_ptd.sh",
    ),
    "qwen2.5-7b": (
        "qwen2.5-7b.json",
        f"{EX}/qwen25/ckpt_convert_qwen25_hf2mcore.sh",
        f"{EX}/qwen25/ckpt_convert_qwen25_mcore2hf.sh",
        f"{EX}/qwen25/pretrain_qwen25_7b_32k_ptd.sh",
    ),
    **{
        f"qwen2.5-{size}": (
            size,
            f"{EX}/qwen25/ckpt_convert_qwen25_{size}_hf2mcore.sh",
            f"{EX}/qwen25/ckpt_convert_qwen25_{size}_mcore2hf.sh",
            f"{EX}/qwen25/pretrain_qwen25_{size}_32k_ptd.sh",
        )
        for size in QWEN25_SHAPES
    },
    "llama-2-7b": (
        "llama-2-7b.json",
        f"{EX}/llama2/ckpt_convert_llama2_hf2mcore.sh",
        f"{EX}/llama2/ckpt_convert_llama2_mcore2hf.sh",
        f"{EX}/llama2/pretrain_llama2_7b_ptd.sh",
    ),
    "llama-3-8b": (
        "llama-3-8b.json",
        f"{EX}/llama3/ckpt_convert_llama3_hf2mcore.sh",
        f"{EX}/llama3/ckpt_convert_llama3_mcore2hf.sh",
        f"{EX}/llama3/pretrain_llama3_8b_ptd.sh",
    ),
    **{
        f"qwen3-{size}": (
            f"qwen3-{size}.json",
            f"{EX}/qwen3/ckpt_convert_qwen3_{tag}_hf2mcore.sh",
            f"{EX}/qwen3/ckpt_convert_qwen3_{tag}_mcore2hf.sh",
            f"{EX}/qwen3/pretrain_qwen3_{tag}_4K_ptd.sh",
        )
        for size, tag in [
            ("0.6b", "0point6b"),
            ("1.7b", "1point7b"),
            ("4b", "4b"),
            ("8b", "8b"),
            ("14b", "14b"),
            ("32b", "32b"),
        ]
    },
}


def _hf_config(source: str) -> dict:
    if source in QWEN25_SHAPES:
        return {**json.loads((HF_CONFIG_FIXTURES / "qwen2.5-7b.json").read_text()), **QWEN25_SHAPES[source]}
    return json.loads((HF_CONFIG_FIXTURES / source).read_text())


def _recorded_argv(script: str, launcher: str, tmp_path: Path) -> list[str]:
    """Run ``script`` with ``launcher`` (python or torchrun) replaced by a recorder; return its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / launcher
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    recorder.chmod(0o755)
    out = tmp_path / f"{launcher}.args"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_OUT": str(out),
           "LOG_DIR": str(tmp_path / "logs"), "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(["bash", str(REPO_ROOT / script)], check=True, env=env, cwd=REPO_ROOT, capture_output=True,
                   timeout=120)
    return [a for a in out.read_text().split("\n") if a]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_scripts_match_the_model_and_each_other(model: str, tmp_path: Path) -> None:
    source, hf2mcore, mcore2hf, pretrain = MODELS[model]
    cfg = ModelConfig.from_hf_config(_hf_config(source))

    argv = _recorded_argv(hf2mcore, "python", tmp_path)
    assert argv[0] == "convert_ckpt.py"
    to_mg = options_from_args(build_parser().parse_args(argv[1:]))
    assert (to_mg.load_model_type, to_mg.save_model_type) == ("hf", "mg")
    check_parallel(cfg, to_mg.target_tp, to_mg.target_pp, to_mg.num_layer_list)
    check_model_type_hf(to_mg.model_type_hf, cfg)
    assert to_mg.add_qkv_bias == cfg.add_qkv_bias
    padded = target_padded_vocab(cfg, to_mg)

    back = options_from_args(build_parser().parse_args(_recorded_argv(mcore2hf, "python", tmp_path)[1:]))
    assert (back.load_model_type, back.save_model_type) == ("mg", "hf")
    assert Path(back.save_dir) == Path(to_mg.load_dir)
    check_model_type_hf(back.model_type_hf, cfg)
    assert bool(back.add_qkv_bias) == cfg.add_qkv_bias  # checked against the checkpoint when given

    argv = _recorded_argv(pretrain, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    args = validate_args(parse_args(argv[argv.index("pretrain_gpt.py") + 1:]), world_size=world)
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads) == (
        cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads)
    groups = args.num_query_groups if args.group_query_attention else args.num_attention_heads
    assert groups == cfg.num_query_groups
    assert args.untie_embeddings_and_output_weights == (not cfg.tie_word_embeddings)
    assert args.add_qkv_bias == cfg.add_qkv_bias
    assert args.qk_layernorm == cfg.qk_layernorm and args.kv_channels == cfg.kv_channels
    assert args.rotary_base == cfg.rotary_base and args.norm_epsilon == cfg.norm_epsilon
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (
        to_mg.target_tp,
        to_mg.target_pp,
    )
    assert args.padded_vocab_size == padded
    assert Path(args.load) == Path(to_mg.save_dir)
    assert Path(back.load_dir) == Path(args.save)  # mcore->hf converts what training saved
    assert Path(args.tokenizer_name_or_path) == Path(to_mg.load_dir)


def test_lora_tune_script_fits_the_base_conversion_and_its_export(tmp_path: Path) -> None:
    """tune_qwen25_7b_4k_lora_ptd.sh trains adapters (SFT on the instruction data) on what the hf->mcore
    script writes (same TP/PP, model), resumes from its own --save through --lora-load, and
    ckpt_convert_qwen25_mcore2hf_lora.sh exports that adapter with the same LoRA settings."""
    from mindspeed_llm.data.arguments import build_parser as preprocess_parser

    cfg = ModelConfig.from_hf_config(_hf_config("qwen2.5-7b.json"))
    to_mg = options_from_args(build_parser().parse_args(
        _recorded_argv(f"{EX}/qwen25/ckpt_convert_qwen25_hf2mcore.sh", "python", tmp_path)[1:]))
    data = preprocess_parser().parse_args(
        _recorded_argv(f"{EX}/qwen25/data_convert_qwen25_instruction.sh", "python", tmp_path)[1:])
    argv = _recorded_argv(f"{EX}/qwen25/tune_qwen25_7b_4k_lora_ptd.sh", "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    args = validate_args(parse_args(argv[argv.index("posttrain_gpt.py") + 1:]), world_size=world)
    assert args.stage == "sft" and args.is_instruction_dataset and not args.finetune
    assert args.data_path == [data.output_prefix] and args.prompt_type == data.prompt_type
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size) == (cfg.num_layers, cfg.hidden_size,
                                                                         cfg.ffn_hidden_size)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (
        to_mg.target_tp,
        to_mg.target_pp,
    )
    assert Path(args.load) == Path(to_mg.save_dir)
    assert Path(args.lora_load) == Path(args.save) and args.lora_ckpt_filter
    assert sorted(args.lora_target_modules) == ["linear_fc1", "linear_fc2", "linear_proj", "linear_qkv"]
    for env in ({}, {"SAVE_LORA_TO_HF": "1"}):
        os.environ.update(env)
        try:
            export = options_from_args(build_parser().parse_args(
                _recorded_argv(f"{EX}/qwen25/ckpt_convert_qwen25_mcore2hf_lora.sh", "python", tmp_path)[1:]))
        finally:
            for key in env:
                os.environ.pop(key)
        assert (export.load_model_type, export.save_model_type) == ("mg", "hf")
        assert Path(export.load_dir) == Path(args.load) and Path(export.lora_load) == Path(args.save)
        expected = export.lora_expected  # what the export checks against the adapter it reads
        assert (expected["r"], expected["alpha"]) == (args.lora_r, args.lora_alpha)
        assert sorted(expected["target_modules"]) == sorted(args.lora_target_modules)
        assert export.save_lora_to_hf == bool(env)


# model: (the MODELS entry whose conversion it fine-tunes, instruction data script, tune script,
# --prompt-type)
TUNE = {
    "qwen2.5-7b": ("qwen2.5-7b", f"{EX}/qwen25/data_convert_qwen25_instruction.sh",
                   f"{EX}/qwen25/tune_qwen25_7b_4k_full_ptd.sh", "qwen"),
    "qwen3-8b": ("qwen3-8b", f"{EX}/qwen3/data_convert_qwen3_instruction.sh",
                 f"{EX}/qwen3/tune_qwen3_8b_4K_full_ptd.sh", "qwen3"),
}


@pytest.mark.parametrize("model", sorted(TUNE))
def test_tune_scripts_fine_tune_the_converted_model_on_the_instruction_data(
    model: str, tmp_path: Path
) -> None:
    """The SFT script: posttrain_gpt.py --stage sft, the model of config.json, the hf->mcore checkpoint (same
    TP/PP), the data script's output prefix and chat template, and a save folder of its own."""
    from mindspeed_llm.data.arguments import build_parser as preprocess_parser

    base, data_script, tune, prompt_type = TUNE[model]
    source, hf2mcore, _, pretrain = MODELS[base]
    cfg = ModelConfig.from_hf_config(_hf_config(source))
    to_mg = options_from_args(build_parser().parse_args(_recorded_argv(hf2mcore, "python", tmp_path)[1:]))
    data = preprocess_parser().parse_args(_recorded_argv(data_script, "python", tmp_path)[1:])
    assert data.handler_name == "AlpacaStyleInstructionHandler" and data.prompt_type == prompt_type

    argv = _recorded_argv(tune, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    args = validate_args(parse_args(argv[argv.index("posttrain_gpt.py") + 1:]), world_size=world)
    assert args.stage == "sft" and args.is_instruction_dataset and args.finetune
    assert args.prompt_type == prompt_type and args.no_pad_to_seq_lengths
    assert args.data_path == [data.output_prefix]
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads) == (
        cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads)
    assert args.qk_layernorm == cfg.qk_layernorm and args.add_qkv_bias == cfg.add_qkv_bias
    assert args.rotary_base == cfg.rotary_base and args.kv_channels == cfg.kv_channels
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (
        to_mg.target_tp,
        to_mg.target_pp,
    )
    assert args.padded_vocab_size == target_padded_vocab(cfg, to_mg)
    assert Path(args.load) == Path(to_mg.save_dir) and Path(args.tokenizer_name_or_path) == Path(
        to_mg.load_dir
    )
    pretrain_argv = _recorded_argv(pretrain, "torchrun", tmp_path)
    assert Path(args.save) != Path(
        parse_args(pretrain_argv[pretrain_argv.index("pretrain_gpt.py") + 1 :]).save
    )


# model: generate script (inference.py), checked against the model's pretrain script.
GENERATE = {
    "qwen2.5-7b": f"{EX}/qwen25/generate_qwen25_7b_ptd.sh",
    "qwen3-8b": f"{EX}/qwen3/generate_qwen3_8b_ptd.sh",
    "llama-3-8b": f"{EX}/llama3/generate_llama3_8b_ptd.sh",
}


@pytest.mark.parametrize("model", sorted(GENERATE))
def test_generate_script_loads_what_pretraining_saves(model: str, tmp_path: Path) -> None:
    """The generate script's flags pass inference.py's checks for its world size, describe the model of
    config.json, and load the pretrain script's --save with its TP/PP and padded vocabulary."""
    from mindspeed_llm.config.flags import add_inference_args
    from mindspeed_llm.config.validate import check_inference_args

    source, _, _, pretrain = MODELS[model]
    cfg = ModelConfig.from_hf_config(_hf_config(source))
    argv = _recorded_argv(pretrain, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    train = validate_args(parse_args(argv[argv.index("pretrain_gpt.py") + 1:]), world_size=world)

    argv = _recorded_argv(GENERATE[model], "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    gen = check_inference_args(parse_args(argv[argv.index("inference.py") + 1:], add_inference_args), world)
    assert world == gen.tensor_model_parallel_size * gen.pipeline_model_parallel_size  # one process per shard
    assert (gen.tensor_model_parallel_size, gen.pipeline_model_parallel_size) == (
        train.tensor_model_parallel_size, train.pipeline_model_parallel_size)
    assert (
        gen.num_layers,
        gen.hidden_size,
        gen.ffn_hidden_size,
        gen.num_attention_heads,
        gen.num_query_groups,
    ) == (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads, cfg.num_query_groups)
    for attr in ("untie_embeddings_and_output_weights", "add_qkv_bias", "qk_layernorm", "kv_channels",
                 "rotary_base", "norm_epsilon", "padded_vocab_size", "bf16"):
        assert getattr(gen, attr) == getattr(train, attr), attr
    assert Path(gen.load) == Path(train.save)
    assert Path(gen.tokenizer_name_or_path) == Path(train.tokenizer_name_or_path)
    assert gen.task == ["greedy"] and gen.prompt


@pytest.mark.parametrize("algo", ["", "ulysses_cp_algo", "hybrid_cp_algo"])
@pytest.mark.parametrize("script, tp_pp_cp", [
    (f"{EX}/qwen25/pretrain_qwen25_7b_32k_ptd.sh", (1, 4, 2)),
    ("examples/quickstart/pretrain_qwen25_tiny_long_cp_ptd.sh", (1, 2, 2)),
])
def test_long_sequence_scripts_split_the_sequence_over_context_parallel_ranks(
    script, tp_pp_cp, algo, tmp_path, monkeypatch
):
    """The 32k Qwen2.5-7B script and the quick start's long-sequence run validate with CP 2 (ring by default,
    CP_ALGO=ulysses_cp_algo for Ulysses; hybrid_cp_algo with CP 4 and half the PP, as their comments say)
    for their world size, and load what the quick start / hf->mcore conversion writes (the same TP/PP as
    the script without CP)."""
    if algo:
        monkeypatch.setenv("CP_ALGO", algo)
    if algo == "hybrid_cp_algo":
        tp_pp_cp = (tp_pp_cp[0], tp_pp_cp[1] // 2, 4)
        monkeypatch.setenv("CP", "4")
        monkeypatch.setenv("PP", str(tp_pp_cp[1]))
    argv = _recorded_argv(script, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    args = validate_args(parse_args(argv[argv.index("pretrain_gpt.py") + 1:]), world_size=world)
    assert (
        args.tensor_model_parallel_size,
        args.pipeline_model_parallel_size,
        args.context_parallel_size,
    ) == tp_pp_cp
    assert args.context_parallel_algo == (algo or "megatron_cp_algo")
    assert args.ulysses_degree_in_cp == (2 if algo == "hybrid_cp_algo" else None)
    assert args.seq_length >= 4096 and args.seq_length % (2 * args.context_parallel_size) == 0
    from mindspeed_llm.config.groups import RunConfig
    from mindspeed_llm.config.plan import parallel_layout

    dp = parallel_layout(RunConfig.from_args(args), world).data_parallel_size
    assert dp == world // (tp_pp_cp[0] * tp_pp_cp[1] * tp_pp_cp[2])
