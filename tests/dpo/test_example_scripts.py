"""The DPO example scripts: the pairwise data script's flags parse (AlpacaStylePairwiseHandler, the orca
map-keys, the model's chat template) and the DPO script's flags validate for its world size as
posttrain_gpt.py --stage dpo on that data, with the model of config.json and the hf->mcore checkpoint's layout
(launchers replaced by a recorder of their arguments, as tests/examples does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.validate import validate_args
from mindspeed_llm.convert.cli import build_parser, options_from_args
from mindspeed_llm.models.families import ModelConfig
from tests.examples.test_model_example_scripts import EX, MODELS, _hf_config, _recorded_argv

# model: (the MODELS entry, pairwise data script, DPO script, --prompt-type)
DPO = {
    "qwen2.5-7b": (
        "qwen2.5-7b",
        f"{EX}/qwen25/data_convert_qwen25_pairwise.sh",
        f"{EX}/qwen25/dpo_qwen25_7b_4k_ptd.sh",
        "qwen",
    ),
    "qwen3-8b": (
        "qwen3-8b",
        f"{EX}/qwen3/data_convert_qwen3_pairwise.sh",
        f"{EX}/qwen3/dpo_qwen3_8b_4K_ptd.sh",
        "qwen3",
    ),
}


@pytest.mark.parametrize("model", sorted(DPO))
def test_dpo_scripts_align_the_converted_model_on_the_pairwise_data(model: str, tmp_path: Path) -> None:
    from mindspeed_llm.data.arguments import build_parser as preprocess_parser

    base, data_script, dpo, prompt_type = DPO[model]
    source, hf2mcore, _, _ = MODELS[base]
    cfg = ModelConfig.from_hf_config(_hf_config(source))
    to_mg = options_from_args(build_parser().parse_args(_recorded_argv(hf2mcore, "python", tmp_path)[1:]))
    data = preprocess_parser().parse_args(_recorded_argv(data_script, "python", tmp_path)[1:])
    assert data.handler_name == "AlpacaStylePairwiseHandler" and data.prompt_type == prompt_type
    assert data.map_keys == '{"prompt":"question", "query":"", "system":"system"}'

    argv = _recorded_argv(dpo, "torchrun", tmp_path)
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    args = validate_args(parse_args(argv[argv.index("posttrain_gpt.py") + 1 :]), world_size=world)
    assert (
        args.stage == "dpo" and args.is_pairwise_dataset and args.finetune and not args.is_instruction_dataset
    )
    assert args.dpo_loss_type == "sigmoid" and args.dpo_beta == 0.1 and args.prompt_type == prompt_type
    assert args.data_path == [data.output_prefix]
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size) == (
        cfg.num_layers,
        cfg.hidden_size,
        cfg.ffn_hidden_size,
    )
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (
        to_mg.target_tp,
        to_mg.target_pp,
    )
    assert Path(args.load) == Path(to_mg.save_dir)
