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
from tests.conftest import HF_CONFIG_FIXTURES

EXPECTED = {
    # file: (arch, layers, hidden, ffn, heads, groups, vocab, base, eps, bias, tied, dtype)
    "qwen2.5-7b.json": (
        "Qwen2ForCausalLM",
        28,
        3584,
        18944,
        28,
        4,
        152064,
        1e6,
        1e-6,
        True,
        False,
        torch.bfloat16,
    ),
    "qwen2.5-0.5b.json": (
        "Qwen2ForCausalLM",
        24,
        896,
        4864,
        14,
        2,
        151936,
        1e6,
        1e-6,
        True,
        True,
        torch.bfloat16,
    ),
    "llama-2-7b.json": (
        "LlamaForCausalLM",
        32,
        4096,
        11008,
        32,
        32,
        32000,
        1e4,
        1e-5,
        False,
        False,
        torch.float16,
    ),
    "llama-3-8b.json": (
        "LlamaForCausalLM",
        32,
        4096,
        14336,
        32,
        8,
        128256,
        5e5,
        1e-5,
        False,
        False,
        torch.bfloat16,
    ),
    "llama-3.1-8b.json": (
        "LlamaForCausalLM",
        32,
        4096,
        14336,
        32,
        8,
        128256,
        5e5,
        1e-5,
        False,
        False,
        torch.bfloat16,
    ),
    "mistral-7b-v0.1.json": (
        "MistralForCausalLM",
        32,
        4096,
        14336,
        32,
        8,
        32000,
        1e4,
        1e-5,
        False,
        False,
        torch.bfloat16,
    ),
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
    raw["rope_scaling"].update(
        low_freq_factor=2.0, high_freq_factor=8.0, original_max_position_embeddings=4096
    )
    cfg = ModelConfig.from_hf_config(raw)
    ours = cfg.llama3_inv_freq()
    raw.pop("model_type")
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**raw), "cpu")
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)


def test_unsupported_inputs_are_rejected(hf_config_dir):
    raw = json.loads((hf_config_dir / "llama-3-8b.json").read_text())
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        ModelConfig.from_hf_config(
            {**raw, "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}
        ).rope_kwargs()
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


# ---- Qwen3 (hub configs in tests/fixtures/hf_configs) and the keys that are refused ------------------------
QWEN3_FIXTURES = HF_CONFIG_FIXTURES
QWEN3 = {
    # size: (layers, hidden, ffn, heads, groups, tied) -- all with head_dim 128, theta 1e6, eps 1e-6, vocab
    # 151936
    "0.6b": (28, 1024, 3072, 16, 8, True),
    "1.7b": (28, 2048, 6144, 16, 8, True),
    "4b": (36, 2560, 9728, 32, 8, True),
    "8b": (36, 4096, 12288, 32, 8, False),
    "14b": (40, 5120, 17408, 40, 8, False),
    "32b": (64, 5120, 25600, 64, 8, False),
}


@pytest.mark.parametrize("size", sorted(QWEN3))
def test_reads_qwen3_hub_configs_both_transformers_spellings(size):
    from transformers import AutoConfig

    path = QWEN3_FIXTURES / f"qwen3-{size}.json"
    cfg = ModelConfig.from_hf_config(path)
    layers, hidden, ffn, heads, groups, tied = QWEN3[size]
    assert _fields(cfg) == (
        "Qwen3ForCausalLM",
        layers,
        hidden,
        ffn,
        heads,
        groups,
        151936,
        1e6,
        1e-6,
        False,
        tied,
        torch.bfloat16,
    )
    assert (
        cfg.kv_channels == 128
        and cfg.qk_layernorm
        and cfg.sliding_window is None
        and cfg.rope_scaling is None
    )
    tc = cfg.to_transformer_config(params_dtype=torch.float32)
    assert tc.qk_layernorm and tc.kv_channels == 128 and not tc.add_qkv_bias
    raw = json.loads(path.read_text())
    model_type = raw.pop("model_type")
    v5 = ModelConfig.from_hf_config(AutoConfig.for_model(model_type, **raw).to_dict())
    assert _fields(v5) == _fields(cfg) and v5.kv_channels == 128 and v5.qk_layernorm
    out = cfg.to_hf_config()  # transformers' Qwen3 default head_dim is 128 whatever hidden / heads: written
    assert ModelConfig.from_hf_config(out) == cfg and out["head_dim"] == 128


def test_qwen3_alias():
    cfg = ModelConfig.from_hf_config(QWEN3_FIXTURES / "qwen3-8b.json")
    check_model_type_hf("qwen3", cfg)
    with pytest.raises(UnsupportedModelError, match="contradicts"):
        check_model_type_hf("qwen25", cfg)


def _qwen3(**changes):
    raw = json.loads((QWEN3_FIXTURES / "qwen3-0.6b.json").read_text())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "changes,needle",
    [
        (
            {"rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 32768}},
            "rope_scaling rope_type='yarn' has no factor",
        ),
        (
            {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "rope_scaling rope_type='dynamic' is not supported",
        ),
        (
            {"rope_scaling": {"rope_type": "linear", "factor": 2.0, "attention_factor": 0.5}},
            "rope_scaling attention_factor=0.5 is not supported for rope_type 'linear'",
        ),
        (
            {"rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1.0}},
            "rope_scaling rope_type='llama3' has no factor",
        ),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5 is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"attention_bias": True}, "attention_bias=True is not supported for Qwen3ForCausalLM"),
        ({"mlp_bias": True}, "config.json key mlp_bias=True is not known for Qwen3ForCausalLM"),
        ({"use_mrope": True}, "config.json key use_mrope=True is not known"),
        (
            {"layer_types": ["full_attention"] * 27 + ["chunked_attention"]},
            "layer_types entry 'chunked_attention'",
        ),
    ],
)
def test_keys_that_change_the_math_are_refused_by_name(changes, needle):
    with pytest.raises(UnsupportedModelError) as err:
        ModelConfig.from_hf_config(_qwen3(**changes))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_llama_attention_and_mlp_bias_are_refused(hf_config_dir):
    raw = json.loads((hf_config_dir / "llama-3.1-8b.json").read_text())
    with pytest.raises(UnsupportedModelError, match="attention_bias=True .* o_proj"):
        ModelConfig.from_hf_config({**raw, "attention_bias": True})
    with pytest.raises(UnsupportedModelError, match="mlp_bias=True"):
        ModelConfig.from_hf_config({**raw, "mlp_bias": True})


@pytest.mark.parametrize(
    "changes,window",
    [
        ({}, None),
        (
            {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 28},
            None,
        ),  # no layer from 28 on
        ({"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}, 4096),
        ({"sliding_window": 512, "layer_types": ["sliding_attention"] * 28}, 512),
    ],
)
def test_sliding_window_is_active_by_hf_rules_and_checked_against_the_length(changes, window):
    cfg = ModelConfig.from_hf_config(_qwen3(**changes))
    assert cfg.sliding_window == window
    if window:
        cfg.check_sequence_length(window, "--seq-length")
        with pytest.raises(UnsupportedModelError, match=f"sliding_window={window} is active .* --seq-length "
                                                        f"{window + 1} is longer"):
            cfg.check_sequence_length(window + 1, "--seq-length")


def test_every_family_has_its_inferred_model_type():
    """Training straight from an HF folder infers --model-type-hf from the architecture: every family row
    is in that table, with a value the flag accepts."""
    from mindspeed_llm.models.families import FAMILIES
    from mindspeed_llm.models.names import ARCHITECTURE_MODEL_TYPE_HF, MODEL_TYPE_HF_CHOICES

    assert set(ARCHITECTURE_MODEL_TYPE_HF) == set(FAMILIES)
    assert set(ARCHITECTURE_MODEL_TYPE_HF.values()) <= set(MODEL_TYPE_HF_CHOICES)
