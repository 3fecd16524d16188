"""--verify: transformers' logits vs our megatron-core model built from the written checkpoint."""

import os

import pytest
import torch

from mindspeed_llm.convert import VerificationError
from mindspeed_llm.convert.cli import main
from mindspeed_llm.convert.verify import verify_checkpoint
from mindspeed_llm.runtime.checkpoint import load_rank_state, save_rank_state
from tests.checkpoint.tiny_models import make_tiny_hf_model


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("hf") / "qwen")
    make_tiny_hf_model(folder, "qwen2", vocab_size=127, tokenizer_tokens=100)
    return folder


def test_verify_passes_for_hf_to_mg_mg_to_mg_and_mg_to_hf(capsys, tmp_path, qwen):
    mg = str(tmp_path / "mg")
    assert (
        main(
            [
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--load-dir",
                qwen,
                "--save-dir",
                mg,
                "--add-qkv-bias",
                "--target-tensor-parallel-size",
                "2",
                "--target-pipeline-parallel-size",
                "2",
                "--verify",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "verify: max |Δlogit| = " in capsys.readouterr().out
    assert main(["--load-model-type", "mg", "--save-model-type", "mg", "--load-dir", mg,
                 "--save-dir", str(tmp_path / "mg2"), "--target-pipeline-parallel-size", "4", "--verify",
                 "--params-dtype", "bf16", "--no-progress"]) == 0
    assert main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", mg,
                 "--save-dir", str(tmp_path / "hf"), "--verify", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("verify: max |Δlogit| = ") == 2
    diff = verify_checkpoint(qwen, mg, log=lambda s: None)
    assert diff is not None and diff <= 1e-4


def test_qwen3_verifies_in_every_direction_and_a_swapped_q_norm_fails(capsys, tmp_path):
    """Qwen3 (q/k norms, head_dim 32 != hidden / heads, tied, --model-type-hf qwen3): hf->mg, mg->mg,
    mg->hf."""
    hf = str(tmp_path / "qwen3")
    make_tiny_hf_model(hf, "qwen3_tied")
    mg = str(tmp_path / "mg")
    assert (
        main(
            [
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--load-dir",
                hf,
                "--save-dir",
                mg,
                "--model-type-hf",
                "qwen3",
                "--target-tensor-parallel-size",
                "2",
                "--target-pipeline-parallel-size",
                "2",
                "--verify",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--load-model-type",
                "mg",
                "--save-model-type",
                "mg",
                "--load-dir",
                mg,
                "--save-dir",
                str(tmp_path / "mg2"),
                "--target-tensor-parallel-size",
                "1",
                "--target-pipeline-parallel-size",
                "4",
                "--verify",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--load-model-type",
                "mg",
                "--save-model-type",
                "hf",
                "--load-dir",
                str(tmp_path / "mg2"),
                "--save-dir",
                str(tmp_path / "back"),
                "--model-type-hf",
                "qwen3",
                "--verify",
                "--no-progress",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("verify: max |Δlogit| = ") == 3
    state = load_rank_state(mg, None, 1, 0, 2)
    model = state["model"]
    (
        model["decoder.layers.0.self_attention.q_layernorm.weight"],
        model["decoder.layers.0.self_attention.k_layernorm.weight"],
    ) = (
        model["decoder.layers.0.self_attention.k_layernorm.weight"],
        model["decoder.layers.0.self_attention.q_layernorm.weight"],
    )
    for tp_rank in (0, 1):  # replicated tensors: every TP rank holds the swap
        rank_state = load_rank_state(mg, None, tp_rank, 0, 2)
        rank_state["model"] = {**rank_state["model"], **{k: model[k] for k in model if "layernorm" in k}}
        save_rank_state(mg, 1, tp_rank, 0, 2, rank_state)
    with pytest.raises(VerificationError):
        verify_checkpoint(hf, mg, log=lambda s: None)


def test_verify_fails_loudly_on_a_corrupted_tensor(tmp_path, qwen):
    mg = str(tmp_path / "mg")
    assert main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", qwen, "--save-dir", mg,
                 "--add-qkv-bias", "--target-tensor-parallel-size", "2", "--no-progress"]) == 0
    state = load_rank_state(mg, 1, 1, 0, 1, mmap=False)
    w = state["model"]["decoder.layers.2.mlp.linear_fc1.weight"]
    state["model"]["decoder.layers.2.mlp.linear_fc1.weight"] = torch.roll(w, 1, dims=0)  # gate/up rows mixed
    save_rank_state(mg, 1, 1, 0, 1, state)
    with pytest.raises(VerificationError, match="max \\|Δlogit\\|"):
        verify_checkpoint(qwen, mg, log=lambda s: None)
    assert os.path.isdir(mg)


@pytest.mark.parametrize("scaling", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},  # Llama 3.1: megatron-core's built-in parameters
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 64},  # other parameters: the builder recomputes inv_freq
])
def test_llama31_rope_scaling_verifies(tmp_path, scaling):
    folder = str(tmp_path / "hf")
    make_tiny_hf_model(folder, "llama", rope_scaling=scaling, rope_theta=500000.0)
    mg = str(tmp_path / "mg")
    assert main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", folder, "--save-dir", mg,
                 "--no-progress"]) == 0
    diff = verify_checkpoint(folder, mg, log=lambda s: None)
    assert diff is not None and diff <= 1e-4


def test_linear_rope_scaling_verifies_where_it_matters(tmp_path):
    """linear (factor 4) -> megatron's seq_len_interpolation_factor: logits equal transformers' over 96
    tokens, where the unscaled model's logits are far off (weights at 10x the usual init, so positions
    weigh)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = str(tmp_path / "hf")
    make_tiny_hf_model(
        folder,
        "qwen3",
        rope_scaling={"rope_type": "linear", "factor": 4.0},
        rope_theta=10000.0,
        initializer_range=0.2,
    )
    mg = str(tmp_path / "mg")
    assert main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", folder, "--save-dir", mg,
                 "--no-progress"]) == 0
    diff = verify_checkpoint(folder, mg, num_tokens=96, log=lambda s: None)
    assert diff is not None and diff <= 1e-4
    config = AutoConfig.from_pretrained(folder)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    unscaled = AutoModelForCausalLM.from_pretrained(folder, config=config, attn_implementation="eager").eval()
    scaled = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.randint(0, 128, (1, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (scaled(ids).logits - unscaled(ids).logits).abs().max() > 100 * 1e-4


def test_verify_compares_at_the_converted_dtype(capsys, tmp_path, qwen):
    """fp32 HF -> bf16 megatron: both sides' weights are rounded to bf16, then run in float32."""
    assert main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", qwen,
                 "--save-dir", str(tmp_path / "mg"), "--add-qkv-bias", "--params-dtype", "bf16", "--verify",
                 "--no-progress"]) == 0
    assert "verify: max |Δlogit| = " in capsys.readouterr().out


def test_verify_that_cannot_run_exits_3_with_the_reason(tmp_path, qwen, monkeypatch, capsys):
    """Too little memory (the machine's free memory is replaced by 1 KiB): exit 3, the output kept, not 0."""
    import mindspeed_llm.convert.verify as verify

    monkeypatch.setattr(verify, "_available_memory", lambda: 1024)
    mg = str(tmp_path / "mg")
    code = main(["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", qwen, "--save-dir", mg,
                 "--add-qkv-bias", "--no-progress", "--verify"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, err
    assert (
        err[0].startswith("error: --verify could not run: holding both models in float32 needs")
        and mg in err[0]
    )
    assert os.path.isfile(os.path.join(mg, "latest_checkpointed_iteration.txt"))
    with pytest.raises(verify.VerificationUnavailable):
        verify.verify_checkpoint(qwen, mg, log=lambda s: None)
