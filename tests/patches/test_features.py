"""Feature and base op patches: the registry round trip on megatron-core's seams, and a tiny GPTModel
whose logits do not change when every feature patch is on."""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

# Import megatron's modules before patching, so the registry sees (and restores) their copies.
from megatron.core.fusions import fused_bias_swiglu  # noqa: E402,I001
from megatron.core.models.backends import LocalSpecProvider  # noqa: E402
from megatron.core.models.common.embeddings import rope_utils  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.transformer import mlp, torch_norm, transformer_block  # noqa: E402
from megatron.core.transformer.dot_product_attention import DotProductAttention  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

import mindspeed_llm
from mindspeed_llm.ops.attention import FlashDotProductAttention
from mindspeed_llm.ops.rmsnorm import MegatronNorm, RMSNorm, rms_norm_reference
from mindspeed_llm.patches import features
from tests.ops.megatron_env import single_process_model_parallel
from tests.skip_policy import skip_for_hardware

ALL_FLAGS = dict(use_flash_attn=True, use_fused_rmsnorm=True, use_fused_rotary_pos_emb=True,
                 use_fused_swiglu=True)


@pytest.fixture(autouse=True)
def _no_features_leak():
    features.disable_feature_patches()
    yield
    features.disable_feature_patches()


def _self_attention(spec):
    return spec.submodules.self_attention.submodules


def test_base_patch_puts_sequence_parallel_norms_in_the_local_spec():
    assert mindspeed_llm.DEVICE == "cpu"
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    assert spec.submodules.input_layernorm is MegatronNorm
    assert spec.submodules.pre_mlp_layernorm is MegatronNorm
    assert transformer_block.LayerNormImpl is MegatronNorm  # the final layernorm
    assert _self_attention(spec).core_attention is DotProductAttention  # flash attention is flag-only
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, normalization="RMSNorm",
                               sequence_parallel=True, tensor_model_parallel_size=2)
    norm = spec.submodules.input_layernorm(config=config, hidden_size=32, eps=1e-6)
    assert isinstance(norm, RMSNorm) and norm.weight.sequence_parallel is True


def test_base_patch_round_trip_restores_megatron():
    patched_layer_norm = LocalSpecProvider.__dict__["layer_norm"]
    features.revert_base_op_patches()
    try:
        assert LocalSpecProvider.__dict__["layer_norm"] is not patched_layer_norm
        assert torch_norm.WrappedTorchNorm is not MegatronNorm
        assert transformer_block.LayerNormImpl is torch_norm.WrappedTorchNorm
        norm = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.input_layernorm
        assert norm is torch_norm.WrappedTorchNorm
    finally:
        features.apply_base_op_patches("cpu")
    assert LocalSpecProvider.__dict__["layer_norm"] is patched_layer_norm
    assert transformer_block.LayerNormImpl is MegatronNorm


def test_feature_round_trip():
    originals = {
        "core_attention": LocalSpecProvider.__dict__["core_attention"],
        "rope": rope_utils._apply_rotary_pos_emb_bshd,
        "swiglu": fused_bias_swiglu.bias_swiglu_impl,
        "mlp_swiglu": mlp.bias_swiglu_impl,
        "kernel": RMSNorm.__dict__["kernel"],
    }
    targets = features.enable_feature_patches(**ALL_FLAGS)
    assert len(targets) == 4
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    assert _self_attention(spec).core_attention is FlashDotProductAttention
    assert spec.submodules.input_layernorm is MegatronNorm
    assert rope_utils._apply_rotary_pos_emb_bshd is not originals["rope"]
    assert rope_utils._apply_rotary_pos_emb_bshd.__wrapped__ is originals["rope"]
    assert fused_bias_swiglu.bias_swiglu_impl is mlp.bias_swiglu_impl is not originals["swiglu"]
    assert RMSNorm.kernel is not rms_norm_reference
    described = mindspeed_llm.describe()
    assert "[features]" in described and "core_attention" in described and "--use-fused-swiglu" in described

    features.disable_feature_patches()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    assert _self_attention(spec).core_attention is DotProductAttention
    assert LocalSpecProvider.__dict__["core_attention"] is originals["core_attention"]
    assert rope_utils._apply_rotary_pos_emb_bshd is originals["rope"]
    assert fused_bias_swiglu.bias_swiglu_impl is originals["swiglu"]
    assert mlp.bias_swiglu_impl is originals["mlp_swiglu"]
    assert RMSNorm.__dict__["kernel"] is originals["kernel"]
    assert "[features]" not in mindspeed_llm.describe()


def test_enable_twice_and_with_other_flags_replaces():
    features.enable_feature_patches(use_flash_attn=True)
    features.enable_feature_patches(use_flash_attn=True)
    assert _self_attention(get_gpt_layer_local_spec()).core_attention is FlashDotProductAttention
    features.enable_feature_patches(use_fused_rmsnorm=True)
    assert _self_attention(get_gpt_layer_local_spec()).core_attention is DotProductAttention
    assert RMSNorm.kernel is not rms_norm_reference


def test_from_args_reads_megatron_flag_names():
    args = Namespace(use_flash_attn=True, use_fused_rmsnorm=False, swiglu=True)
    assert features.enable_feature_patches_from_args(args) == [f"{features.LOCAL_SPEC}.core_attention"]
    with pytest.raises(ValueError, match="--use-fused-swiglu needs --swiglu"):
        features.enable_feature_patches_from_args(Namespace(use_fused_swiglu=True, swiglu=False))
    with pytest.raises(ValueError, match="--position-embedding-type"):
        features.enable_feature_patches_from_args(
            Namespace(use_fused_rotary_pos_emb=True, position_embedding_type="learned_absolute"))
    overrides = features.transformer_config_overrides(**vars(Namespace(use_fused_swiglu=True)))
    assert overrides == {"bias_activation_fusion": True}
    assert features.transformer_config_overrides() == {}


def test_npu_device_without_torch_npu_is_rejected():
    from mindspeed_llm.ops.npu import get_torch_npu

    if get_torch_npu() is not None:
        skip_for_hardware("torch_npu is importable here: this checks the message on machines without it")
    with pytest.raises(RuntimeError, match="torch_npu"):
        features.enable_feature_patches(use_flash_attn=True, device="npu")
    with pytest.raises(ValueError, match="device="):
        features.enable_feature_patches(use_flash_attn=True, device="tpu")


def test_rope_patch_is_used_by_megatron_and_keeps_its_numbers():
    from mindspeed_llm.ops.rope import rotary_reference

    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4)
    t = torch.randn(6, 1, 4, 8, dtype=torch.float64)
    freqs = torch.randn(6, 1, 1, 8, dtype=torch.float64)
    with single_process_model_parallel():
        want = rope_utils.apply_rotary_pos_emb(t, freqs, config)
        features.enable_feature_patches(use_fused_rotary_pos_emb=True)
        got = rope_utils.apply_rotary_pos_emb(t, freqs, config)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got, rotary_reference(t, freqs))


def _tiny_gpt(config):
    from megatron.core.models.gpt import GPTModel

    torch.manual_seed(0)
    return GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                    vocab_size=128, max_sequence_length=32, position_embedding_type="rope")


def test_tiny_gpt_logits_unchanged_with_every_feature_patch():
    kwargs = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                  normalization="RMSNorm", gated_linear_unit=True, activation_func=torch.nn.functional.silu,
                  add_bias_linear=False, add_qkv_bias=True, attention_dropout=0.0, hidden_dropout=0.0,
                  use_cpu_initialization=True, layernorm_epsilon=1e-6)
    tokens = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    position_ids = torch.arange(20).expand(2, 20)
    with single_process_model_parallel():
        reference = _tiny_gpt(TransformerConfig(**kwargs))
        want = reference(tokens, position_ids, attention_mask=None)
        features.enable_feature_patches(**ALL_FLAGS)
        config = TransformerConfig(**kwargs, **features.transformer_config_overrides(use_fused_swiglu=True))
        model = _tiny_gpt(config)
        assert model.state_dict().keys() == reference.state_dict().keys()
        model.load_state_dict(reference.state_dict())
        assert isinstance(model.decoder.layers[0].self_attention.core_attention, FlashDotProductAttention)
        got = model(tokens, position_ids, attention_mask=None)
        got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
