"""examples/mcore/*/evaluate_*_ptd.sh: each script's flags pass evaluation.py's checks for its world size,
describe the model of its config.json, and load what the model's pretrain script saves (at its TP/PP, with
its padded vocabulary); the lm-eval variant too. The scripts run with torchrun replaced by a recorder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.validate import check_evaluation_args, validate_args
from mindspeed_llm.evaluation.config import add_evaluation_args
from mindspeed_llm.models.families import ModelConfig
from tests.examples.test_model_example_scripts import MODELS, _hf_config, _recorded_argv

EX = "examples/mcore"
EVALUATE = {
    "qwen2.5-7b": f"{EX}/qwen25/evaluate_qwen25_7b_ptd.sh",
    "qwen3-8b": f"{EX}/qwen3/evaluate_qwen3_8b_ptd.sh",
    "llama-3-8b": f"{EX}/llama3/evaluate_llama3_8b_ptd.sh",
}


def _world(argv: list[str]) -> int:
    return int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])


@pytest.mark.parametrize("model", sorted(EVALUATE))
def test_evaluate_script_loads_what_pretraining_saves(model: str, tmp_path: Path, monkeypatch) -> None:
    source, _, _, pretrain = MODELS[model]
    cfg = ModelConfig.from_hf_config(_hf_config(source))
    argv = _recorded_argv(pretrain, "torchrun", tmp_path)
    train = validate_args(parse_args(argv[argv.index("pretrain_gpt.py") + 1:]), world_size=_world(argv))

    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    argv = _recorded_argv(EVALUATE[model], "torchrun", tmp_path)
    ev = check_evaluation_args(parse_args(argv[argv.index("evaluation.py") + 1:], add_evaluation_args),
                               _world(argv))
    assert _world(argv) == ev.tensor_model_parallel_size * ev.pipeline_model_parallel_size
    assert (ev.tensor_model_parallel_size, ev.pipeline_model_parallel_size) == (
        train.tensor_model_parallel_size, train.pipeline_model_parallel_size)
    shape = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups")
    assert [getattr(ev, a) for a in shape] == [getattr(cfg, a) for a in shape]
    for attr in ("untie_embeddings_and_output_weights", "add_qkv_bias", "qk_layernorm", "kv_channels",
                 "rotary_base", "norm_epsilon", "padded_vocab_size", "bf16"):
        assert getattr(ev, attr) == getattr(train, attr), attr
    assert Path(ev.load) == Path(train.save)
    assert Path(ev.tokenizer_name_or_path) == Path(train.tokenizer_name_or_path)
    assert ev.task == ["mmlu"] and ev.task_data_path == [str(tmp_path)] and ev.lm_eval_tasks is None

    monkeypatch.setenv("TASK", "")
    monkeypatch.setenv("LM_EVAL_TASKS", "arc_easy,hellaswag")
    argv = _recorded_argv(EVALUATE[model], "torchrun", tmp_path)
    ev = check_evaluation_args(parse_args(argv[argv.index("evaluation.py") + 1:], add_evaluation_args),
                               _world(argv))
    assert ev.task is None and ev.lm_eval_tasks == "arc_easy,hellaswag"
