"""build_gpt_model in one process (TP1/PP1 on gloo): spec, tied embeddings, RoPE, argument checks."""

import json

import pytest
import torch
from megatron.core import parallel_state as ps

from mindspeed_llm.convert.verify import _ensure_single_process_parallel_state
from mindspeed_llm.models import ModelConfig, build_gpt_model
from tests.checkpoint.tiny_models import tiny_hf_config


@pytest.fixture
def one_process():
    created = _ensure_single_process_parallel_state()
    yield
    ps.destroy_model_parallel()
    if created:
        torch.distributed.destroy_process_group()


def _build(cfg, **kw):
    return build_gpt_model(cfg, padded_vocab_size=kw.pop("padded", 128), pre_process=True, post_process=True,
                           use_cpu_initialization=True, **kw)


def test_tied_and_untied(one_process):
    tied = ModelConfig.from_hf_config(tiny_hf_config("qwen2_tied"))
    model = _build(tied)
    assert model.share_embeddings_and_output_weights and "output_layer.weight" not in model.state_dict()
    untied = ModelConfig.from_hf_config(tiny_hf_config("qwen2"))
    sd = _build(untied).state_dict()
    assert sd["output_layer.weight"].shape == (128, 64)
    assert sd["decoder.layers.0.self_attention.linear_qkv.bias"].shape == ((4 + 2 * 2) * 16,)
    assert sd["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * 96, 64)


def test_llama3_rope_parameters_reach_the_model(one_process):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
               "original_max_position_embeddings": 64}
    raw = tiny_hf_config("llama", rope_scaling=scaling, rope_theta=500000.0)
    model = _build(ModelConfig.from_hf_config(json.loads(json.dumps(raw))))
    raw.pop("model_type")
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**raw), "cpu")
    torch.testing.assert_close(model.rotary_pos_emb.inv_freq.float(), theirs.float(), rtol=1e-6, atol=0)


def test_argument_checks(one_process):
    cfg = ModelConfig.from_hf_config(tiny_hf_config("llama"))
    with pytest.raises(ValueError, match="smaller than the model's 128"):
        _build(cfg, padded=100)
    with pytest.raises(TypeError, match="either transformer_config or config overrides"):
        build_gpt_model(cfg, padded_vocab_size=128, pre_process=True, post_process=True,
                        transformer_config=cfg.to_transformer_config(), use_cpu_initialization=True)


def test_qwen3_q_and_k_norms_are_our_rmsnorm_over_head_dim(one_process):
    """The local spec's q/k norms go through the patched norm (mindspeed_llm.ops.rmsnorm.RMSNorm), per
    head."""
    from mindspeed_llm.ops.rmsnorm import RMSNorm

    cfg = ModelConfig.from_hf_config(tiny_hf_config("qwen3", rms_norm_eps=1e-5))
    attn = _build(cfg).decoder.layers[0].self_attention
    for norm in (attn.q_layernorm, attn.k_layernorm):
        assert isinstance(norm, RMSNorm) and norm.weight.shape == (32,) and norm.eps == 1e-5
    x = torch.randn(5, 1, 4, 32)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_layernorm.weight
    torch.testing.assert_close(attn.q_layernorm(x), ref)
