"""ModelConfig: real hub config.json files (transformers 4 keys) and transformers 5 keys, both directions."""

import json

import pytest
import torch

from mindspeed_llm.models.families import (
    ModelConfig,
    UnsupportedModelError,
    check_model_type_hf,
    pipeline_layout,
)

EXPECTED = {
    # file: (arch, layers, hidden, ffn, heads, groups, vocab, base, eps, bias, tied, dtype)
    "qwen2.5-7b.json": ("Qwen2ForCausalLM", 28, 3584, 18944, 28, 4, 152064, 1e6, 1e-6, True, False, torch.bfloat16),
    "qwen2.5-0.5b.json": ("Qwen2ForCausalLM", 24, 896, 4864, 14, 2, 151936, 1e6, 1e-6, True, True, torch.bfloat16),
    "llama-2-7b.json": ("LlamaForCausalLM", 32, 4096, 11008, 32, 32, 32000, 1e4, 1e-5, False, False, torch.float16),
    "llama-3-8b.json": ("LlamaForCausalLM", 32, 4096, 14336, 32, 8, 128256, 5e5, 1e-5, False, False, torch.bfloat16),
    "llama-3.1-8b.json": ("LlamaForCausalLM", 32, 4096, 14336, 32, 8, 128256, 5e5, 1e-5, False, False,
                          torch.bfloat16),
    "mistral-7b-v0.1.json": ("MistralForCausalLM", 32, 4096, 14336, 32, 8, 32000, 1e4, 1e-5, False, False,
                             torch.bfloat16),
}


def _fields(cfg: ModelConfig):
    return (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads,
            cfg.num_query_groups, cfg.vocab_size, cfg.rotary_base, cfg.norm_epsilon, cfg.add_qkv_bias,
            cfg.tie_word_embeddings, cfg.params_dtype)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reads_hub_configs(hf_config_dir, name):
    cfg = ModelConfig.from_hf_config(hf_config_dir / name)
    assert _fields(cfg) == EXPECTED[name]
    assert cfg.kv_channels == cfg.hidden_size // cfg.num_attention_heads


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_transformers5_keys_give_the_same_config(hf_config_dir, name):
    """transformers 5 rewrites rope_theta/rope_scaling/torch_dtype as rope_parameters/dtype."""
    from transformers import AutoConfig

    raw = json.loads((hf_config_dir / name).read_text())
    model_type = raw.pop("model_type")
    v5 = AutoConfig.for_model(model_type, **raw).to_dict()
    assert "rope_parameters" in v5 and "rope_theta" not in v5
    assert v5.get("dtype") is not None
    a, b = ModelConfig.from_hf_config(hf_config_dir / name), ModelConfig.from_hf_config(v5)
    assert _fields(a) == _fields(b)
    assert a.rope_scaling == b.rope_scaling


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_to_hf_config_round_trip_and_transformers_reads_it(hf_config_dir, name):
    from transformers import AutoConfig

    cfg = ModelConfig.from_hf_config(hf_config_dir / name)
    out = cfg.to_hf_config()
    assert ModelConfig.from_hf_config(out) == cfg
    model_type = out.pop("model_type")
    loaded = AutoConfig.for_model(model_type, **out)
    assert loaded.num_key_value_heads == cfg.num_query_groups
    assert loaded.rope_parameters["rope_theta"] == cfg.rotary_base
    assert loaded.tie_word_embeddings == cfg.tie_word_embeddings


def test_transformer_config(hf_config_dir):
    cfg = ModelConfig.from_hf_config(hf_config_dir / "qwen2.5-7b.json")
    tc = cfg.to_transformer_config(tensor_model_parallel_size=1, params_dtype=torch.float32)
    assert tc.normalization == "RMSNorm" and tc.gated_linear_unit and not tc.add_bias_linear
    assert tc.add_qkv_bias and tc.num_query_groups == 4 and tc.kv_channels == 128
    assert tc.activation_func is torch.nn.functional.silu
    assert tc.layernorm_epsilon == 1e-6 and tc.params_dtype == torch.float32 and not tc.bf16
    assert cfg.rope_kwargs() == {"position_embedding_type": "rope", "rotary_base": 1e6}


def test_llama31_rope_scaling_maps_to_megatron(hf_config_dir):
    cfg = ModelConfig.from_hf_config(hf_config_dir / "llama-3.1-8b.json")
    assert cfg.rope_scaling["rope_type"] == "llama3"
    assert cfg.rope_kwargs()["rope_scaling"] is True and cfg.rope_kwargs()["rope_scaling_factor"] == 8.0
    assert cfg.llama3_inv_freq() is None  # megatron's built-in parameters are these ones


def test_llama3_rope_with_other_parameters_matches_transformers(hf_config_dir):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = json.loads((hf_config_dir / "llama-3.1-8b.json").read_text())
    raw["rope_scaling"].update(low_freq_factor=2.0, high_freq_factor=8.0, original_max_position_embeddings=4096)
    cfg = ModelConfig.from_hf_config(raw)
    ours = cfg.llama3_inv_freq()
    raw.pop("model_type")
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**raw), "cpu")
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)


def test_unsupported_inputs_are_rejected(hf_config_dir):
    raw = json.loads((hf_config_dir / "llama-3-8b.json").read_text())
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf_config({**raw, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}).rope_kwargs()
    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        ModelConfig.from_hf_config({**raw, "hidden_act": "gelu"})
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        ModelConfig.from_hf_config({**raw, "architectures": ["GPT2LMHeadModel"]})


def test_model_type_hf_aliases(hf_config_dir):
    qwen = ModelConfig.from_hf_config(hf_config_dir / "qwen2.5-7b.json")
    check_model_type_hf("llama2", qwen)  # MindSpeed's catch-all keeps working for Qwen folders
    check_model_type_hf("qwen25", qwen)
    with pytest.raises(UnsupportedModelError, match="contradicts"):
        check_model_type_hf("mistral", qwen)


def test_pipeline_layout():
    assert pipeline_layout([2, 2]) is None
    assert pipeline_layout([1, 3]) == [["embedding", "decoder"], ["decoder"] * 3 + ["loss"]]
