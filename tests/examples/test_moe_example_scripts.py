"""The mixture-of-experts example scripts (dry runs, no training): examples/mcore/qwen3_moe/ (Qwen3-30B-A3B)
and examples/mcore/mixtral/ (Mixtral-8x7B).

For each model: the hf->mcore script's flags pass the converter's checks against the hub's config.json (TP/PP
divide heads and layers, EP divides the experts, --model-type-hf fits the architecture); the pretrain, tune,
generate and evaluate scripts' flags parse and validate for their world size, describe the experts of
config.json (count, top-k, expert FFN size, renormalised top-k, which layers are MoE) and its dense shape, and
load what the conversion writes (or what training saves) at its TP/PP/EP and expert layout; the mcore->hf
script converts what training saved back into the HF folder. Launchers are replaced by a recorder of their
arguments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mindspeed_llm.config.flags import add_inference_args, parse_args
from mindspeed_llm.config.validate import check_evaluation_args, check_inference_args, validate_args
from mindspeed_llm.convert.cli import build_parser, options_from_args
from mindspeed_llm.convert.convert import check_parallel, target_padded_vocab
from mindspeed_llm.evaluation.config import add_evaluation_args
from mindspeed_llm.models.families import ModelConfig, check_model_type_hf
from tests.examples.test_model_example_scripts import _hf_config, _recorded_argv

EX = "examples/mcore"
# model: (config.json, folder, name stem, pretrain, tune, generate, evaluate, prompt type, world)
MODELS = {
    "qwen3-30b-a3b": ("qwen3-30b-a3b.json", f"{EX}/qwen3_moe", "qwen3_moe",
                      "pretrain_qwen3_30b_a3b_4K_ptd.sh", "tune_qwen3_30b_a3b_4K_full_ptd.sh",
                      "generate_qwen3_30b_a3b_ptd.sh",
                      "evaluate_qwen3_30b_a3b_ptd.sh", "qwen3", 16),
    "mixtral-8x7b": ("mixtral-8x7b-v0.1.json", f"{EX}/mixtral", "mixtral", "pretrain_mixtral_8x7b_ptd.sh",
                     "tune_mixtral_8x7b_full_ptd.sh", "generate_mixtral_8x7b_ptd.sh",
                     "evaluate_mixtral_8x7b_ptd.sh", "mistral", 32),
}
# (TP, PP, EP) of each model's scripts: Qwen3-30B-A3B as MindSpeed-LLM's pretrain script, Mixtral on 4 nodes.
LAYOUTS = {"qwen3-30b-a3b": (1, 2, 8), "mixtral-8x7b": (1, 4, 8)}


def _world(argv: list[str]) -> int:
    return int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])


def _launch(script: str, entry: str, tmp_path: Path, check) -> tuple:
    argv = _recorded_argv(script, "torchrun", tmp_path)
    return check(argv[argv.index(entry) + 1:], _world(argv)), _world(argv)


def _train(argv, world):
    return validate_args(parse_args(argv), world_size=world)


def _layout(args) -> tuple[int, int, int]:
    return args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.expert_model_parallel_size


def _assert_model(args, cfg: ModelConfig) -> None:
    """The launch describes config.json's model: dense shape and experts."""
    groups = args.num_query_groups if args.group_query_attention else args.num_attention_heads
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, groups) == (
        cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups)
    assert (args.num_experts, args.moe_router_topk, args.moe_ffn_hidden_size) == (
        cfg.num_experts, cfg.moe_router_topk, cfg.moe_ffn_hidden_size)
    assert args.moe_router_pre_softmax == cfg.moe_router_pre_softmax and args.norm_topk_prob
    assert tuple(args.moe_layer_freq) == cfg.moe_layers()
    assert args.qk_layernorm == cfg.qk_layernorm and args.add_qkv_bias == cfg.add_qkv_bias
    if cfg.qk_layernorm:
        assert args.kv_channels == cfg.kv_channels
    assert args.rotary_base == cfg.rotary_base and args.norm_epsilon == cfg.norm_epsilon
    assert args.untie_embeddings_and_output_weights == (not cfg.tie_word_embeddings)
    assert args.moe_shared_expert_intermediate_size is None


@pytest.mark.parametrize("model", sorted(MODELS))
def test_moe_scripts_match_the_model_and_each_other(model: str, tmp_path: Path, monkeypatch) -> None:
    source, folder, stem, pretrain, tune, generate, evaluate, prompt_type, world = MODELS[model]
    cfg = ModelConfig.from_hf_config(_hf_config(source))
    assert cfg.num_experts  # the fixture is an MoE config.json

    # hf -> mcore: the layout the training scripts load.
    argv = _recorded_argv(f"{folder}/ckpt_convert_{stem}_hf2mcore.sh", "python", tmp_path)
    to_mg = options_from_args(build_parser().parse_args(argv[1:]))
    assert (to_mg.load_model_type, to_mg.save_model_type) == ("hf", "mg")
    check_parallel(cfg, to_mg.target_tp, to_mg.target_pp, to_mg.num_layer_list)
    check_model_type_hf(to_mg.model_type_hf, cfg)
    assert (to_mg.target_tp, to_mg.target_pp, to_mg.target_ep) == LAYOUTS[model]
    assert cfg.num_experts % to_mg.target_ep == 0 and to_mg.moe_grouped_gemm
    padded = target_padded_vocab(cfg, to_mg)

    train, train_world = _launch(f"{folder}/{pretrain}", "pretrain_gpt.py", tmp_path, _train)
    assert train_world == world
    _assert_model(train, cfg)
    assert train.ffn_hidden_size == cfg.ffn_hidden_size
    assert _layout(train) == LAYOUTS[model] and train.expert_tensor_parallel_size == to_mg.target_tp
    assert train.moe_grouped_gemm == to_mg.moe_grouped_gemm and train.padded_vocab_size == padded
    assert train.use_distributed_optimizer and train.moe_token_dispatcher_type == "alltoall"
    assert Path(train.load) == Path(to_mg.save_dir)
    assert Path(train.tokenizer_name_or_path) == Path(to_mg.load_dir)

    # mcore -> hf: what training saved, back into the HF folder it came from.
    back = options_from_args(build_parser().parse_args(
        _recorded_argv(f"{folder}/ckpt_convert_{stem}_mcore2hf.sh", "python", tmp_path)[1:]))
    assert (back.load_model_type, back.save_model_type) == ("mg", "hf")
    check_model_type_hf(back.model_type_hf, cfg)
    assert Path(back.load_dir) == Path(train.save) and Path(back.save_dir) == Path(to_mg.load_dir)

    # SFT: the converted checkpoint, at its layout, on the instruction data script's output.
    from mindspeed_llm.data.arguments import build_parser as preprocess_parser

    data = preprocess_parser().parse_args(
        _recorded_argv(f"{folder}/data_convert_{stem}_instruction.sh", "python", tmp_path)[1:])
    assert data.handler_name == "AlpacaStyleInstructionHandler" and data.prompt_type == prompt_type
    pre_data = preprocess_parser().parse_args(
        _recorded_argv(f"{folder}/data_convert_{stem}_pretrain.sh", "python", tmp_path)[1:])
    assert train.data_path == [f"{pre_data.output_prefix}_text_document"]
    sft, _ = _launch(f"{folder}/{tune}", "posttrain_gpt.py", tmp_path, _train)
    _assert_model(sft, cfg)
    assert sft.stage == "sft" and sft.is_instruction_dataset and sft.finetune
    assert sft.prompt_type == prompt_type
    assert sft.data_path == [data.output_prefix]
    assert _layout(sft) == _layout(train) and sft.moe_grouped_gemm == train.moe_grouped_gemm
    assert sft.padded_vocab_size == padded
    assert Path(sft.load) == Path(to_mg.save_dir) and Path(sft.save) != Path(train.save)

    # Generation and evaluation: what training saved, at its layout, one process per TP x PP x EP shard.
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    for script, entry, add, check in (
        (generate, "inference.py", add_inference_args, check_inference_args),
        (evaluate, "evaluation.py", add_evaluation_args, check_evaluation_args),
    ):
        run, run_world = _launch(f"{folder}/{script}", entry, tmp_path,
                                 lambda argv, w, add=add, check=check: check(parse_args(argv, add), w))
        _assert_model(run, cfg)
        assert _layout(run) == _layout(train) and run_world == world
        assert run_world == run.tensor_model_parallel_size * run.pipeline_model_parallel_size * (
            run.expert_model_parallel_size)
        assert run.moe_grouped_gemm == train.moe_grouped_gemm and run.padded_vocab_size == padded
        assert Path(run.load) == Path(train.save)
        assert Path(run.tokenizer_name_or_path) == Path(train.tokenizer_name_or_path)


def test_qwen3_moe_lora_script_adapts_attention_at_the_full_tune_layout(tmp_path: Path) -> None:
    """The LoRA tune script: the full SFT script's model, layout and data, adapters on the attention layers
    only (expert targets are refused on MoE models), adapter-only saves."""
    folder = f"{EX}/qwen3_moe"
    full, _ = _launch(f"{folder}/tune_qwen3_30b_a3b_4K_full_ptd.sh", "posttrain_gpt.py", tmp_path, _train)
    lora, world = _launch(f"{folder}/tune_qwen3_30b_a3b_4K_lora_ptd.sh", "posttrain_gpt.py", tmp_path, _train)
    _assert_model(lora, ModelConfig.from_hf_config(_hf_config("qwen3-30b-a3b.json")))
    assert world == 16 and _layout(lora) == _layout(full) and lora.data_path == full.data_path
    assert sorted(lora.lora_target_modules) == ["linear_proj", "linear_qkv"] and lora.lora_ckpt_filter
    assert (lora.lora_r, lora.lora_alpha) == (16, 32) and Path(lora.save) != Path(full.save)
