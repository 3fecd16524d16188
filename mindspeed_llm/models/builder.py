"""Build the megatron-core ``GPTModel`` of one (tensor, pipeline[, virtual]) rank from a
:class:`ModelConfig`."""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec

from mindspeed_llm.models.families import ModelConfig


def parallel_overrides() -> dict:
    """Tensor/pipeline sizes from megatron-core's ``parallel_state`` (1/1 when it is not initialised)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}
    return {
        "tensor_model_parallel_size": ps.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": ps.get_pipeline_model_parallel_world_size(),
        "expert_model_parallel_size": ps.get_expert_model_parallel_world_size(),
        "expert_tensor_parallel_size": ps.get_expert_tensor_parallel_world_size(),
    }


def layer_spec(model_config: ModelConfig, transformer_config: Any, vp_stage: int | None = None):
    """The decoder's spec: megatron-core's local layer; with experts, its block of dense and MoE layers
    (megatron-core's ``MoELayer``: ``TopKRouter``, the configured token dispatcher, ``SequentialMLP`` experts
    or, with ``moe_grouped_gemm``, ``GroupedMLP``; a ``SharedExpertMLP`` when configured), as
    ``moe_layer_freq`` lays them out, for this pipeline stage."""
    if not model_config.num_experts:
        return get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=model_config.qk_layernorm)
    return get_gpt_decoder_block_spec(transformer_config, use_transformer_engine=False,
                                      normalization="RMSNorm", vp_stage=vp_stage)


def build_gpt_model(
    model_config: ModelConfig,
    *,
    padded_vocab_size: int,
    pre_process: bool,
    post_process: bool,
    transformer_config: Any = None,
    vp_stage: int | None = None,
    parallel_output: bool = True,
    max_sequence_length: int | None = None,
    **config_overrides: Any,
):
    """megatron-core ``GPTModel`` (local spec, RMSNorm, RoPE) for the current parallel rank.

    ``transformer_config`` is used as given; otherwise one is made from ``model_config`` with the
    parallel sizes of ``parallel_state`` and ``config_overrides`` on top.
    """
    if transformer_config is None:
        overrides = parallel_overrides()
        overrides.update(config_overrides)
        transformer_config = model_config.to_transformer_config(**overrides)
    elif config_overrides:
        raise TypeError("pass either transformer_config or config overrides, not both")
    if padded_vocab_size < model_config.vocab_size:
        raise ValueError(
            f"padded_vocab_size {padded_vocab_size} is smaller than the model's {model_config.vocab_size} "
            "embedding rows"
        )
    spec = layer_spec(model_config, transformer_config, vp_stage)
    model = GPTModel(
        config=transformer_config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size,
        max_sequence_length=max_sequence_length or model_config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=model_config.tie_word_embeddings,
        vp_stage=vp_stage,
        **model_config.rope_kwargs(),
    )
    inv_freq = model_config.llama3_inv_freq()
    if inv_freq is not None and hasattr(model, "rotary_pos_emb"):
        with torch.no_grad():
            model.rotary_pos_emb.inv_freq = inv_freq.to(model.rotary_pos_emb.inv_freq.device)
    return model
