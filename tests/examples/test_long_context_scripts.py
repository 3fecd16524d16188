"""The long-context example scripts (dry runs, no training): Qwen3-8B and Qwen2.5-7B at 128K with YaRN and
context parallelism (pretrain and packed SFT), and the Phi-3.5-mini set (LongRoPE).

Each script's flags parse and validate for its world size (ring and Ulysses), describe the model of the
hub config.json with the rope scaling its conversion comment tells to add, give the RoPE scaling the
converted checkpoint records (the launch-vs-checkpoint rule accepts them), split 131072 tokens over the CP
ranks, and load what its hf->mcore script writes. Launchers are replaced by a recorder of their arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindspeed_llm.config.flags import add_inference_args, parse_args
from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.validate import check_inference_args, validate_args
from mindspeed_llm.convert.cli import build_parser, options_from_args
from mindspeed_llm.convert.convert import check_parallel, target_padded_vocab
from mindspeed_llm.models.families import ModelConfig, check_model_type_hf
from tests.conftest import HF_CONFIG_FIXTURES
from tests.examples.test_model_example_scripts import _recorded_argv

EX = "examples/mcore"
QWEN3_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
QWEN25_YARN = {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
# model: (config.json, rope_scaling the conversion comment adds, hf2mcore, [training scripts])
MODELS = {
    "qwen3-8b-128k": ("qwen3-8b.json", QWEN3_YARN, f"{EX}/qwen3/ckpt_convert_qwen3_8b_128K_yarn_hf2mcore.sh",
                      [f"{EX}/qwen3/pretrain_qwen3_8b_128K_yarn_ptd.sh",
                       f"{EX}/qwen3/tune_qwen3_8b_128K_yarn_full_pack_ptd.sh"]),
    "qwen2.5-7b-128k": ("qwen2.5-7b.json", QWEN25_YARN,
                        f"{EX}/qwen25/ckpt_convert_qwen25_7b_128k_yarn_hf2mcore.sh",
                        [f"{EX}/qwen25/pretrain_qwen25_7b_128k_yarn_ptd.sh",
                         f"{EX}/qwen25/tune_qwen25_7b_128k_yarn_full_pack_ptd.sh"]),
    "phi-3.5-mini": ("phi-3.5-mini-instruct.json", None, f"{EX}/phi35/ckpt_convert_phi35_mini_hf2mcore.sh",
                     [f"{EX}/phi35/pretrain_phi35_mini_ptd.sh"]),
}


def _model(model: str) -> ModelConfig:
    source, scaling, _, _ = MODELS[model]
    raw = json.loads((HF_CONFIG_FIXTURES / source).read_text())
    if scaling is not None:
        raw.update(rope_scaling=scaling, max_position_embeddings=131072)
    return ModelConfig.from_hf_config(raw)


def _launch(script: str, tmp_path: Path):
    argv = _recorded_argv(script, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    entry = next(i for i, a in enumerate(argv) if a.endswith(".py"))
    return validate_args(parse_args(argv[entry + 1:]), world_size=world)


@pytest.mark.parametrize("algo", ["megatron_cp_algo", "ulysses_cp_algo"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_long_context_scripts_fit_the_converted_checkpoint(model, algo, tmp_path, monkeypatch):
    monkeypatch.setenv("CP_ALGO", algo)
    cfg = _model(model)
    to_mg = options_from_args(build_parser().parse_args(_recorded_argv(MODELS[model][2], "python",
                                                                      tmp_path)[1:]))
    check_parallel(cfg, to_mg.target_tp, to_mg.target_pp, to_mg.num_layer_list)
    check_model_type_hf(to_mg.model_type_hf, cfg)
    for script in MODELS[model][3]:
        args = _launch(script, tmp_path)
        assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads,
                args.kv_channels) == (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size,
                                      cfg.num_attention_heads, cfg.kv_channels)
        assert args.rotary_base == cfg.rotary_base and args.norm_epsilon == cfg.norm_epsilon
        assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (to_mg.target_tp,
                                                                                        to_mg.target_pp)
        assert args.padded_vocab_size == target_padded_vocab(cfg, to_mg)
        assert Path(args.load) == Path(to_mg.save_dir)
        # the scaling flags agree with what the checkpoint records (a contradiction raises here)
        assert RunConfig.from_args(args).model.rope_scaling(cfg.rope_scaling) == cfg.rope_scaling
        assert args.rope_scaling_type == cfg.rope_scaling["rope_type"]
        if model != "phi-3.5-mini":
            assert args.seq_length == 131072 and args.context_parallel_size > 1
            assert args.context_parallel_algo == algo
            assert args.seq_length % (2 * args.context_parallel_size) == 0


def test_phi35_generate_and_export_scripts(tmp_path):
    cfg = _model("phi-3.5-mini")
    train = _launch(f"{EX}/phi35/pretrain_phi35_mini_ptd.sh", tmp_path)
    argv = _recorded_argv(f"{EX}/phi35/generate_phi35_mini_ptd.sh", "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    gen = check_inference_args(parse_args(argv[argv.index("inference.py") + 1:], add_inference_args), world)
    assert Path(gen.load) == Path(train.save)
    for attr in ("num_layers", "hidden_size", "kv_channels", "padded_vocab_size", "rope_scaling_type",
                 "rope_scaling_original_max_position_embeddings", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size"):
        assert getattr(gen, attr) == getattr(train, attr), attr
    back = options_from_args(build_parser().parse_args(
        _recorded_argv(f"{EX}/phi35/ckpt_convert_phi35_mini_mcore2hf.sh", "python", tmp_path)[1:]))
    assert (back.load_model_type, back.save_model_type) == ("mg", "hf")
    assert Path(back.load_dir) == Path(train.save)
    check_model_type_hf(back.model_type_hf, cfg)
