"""``--sequence-parallel`` with megatron-core's local spec: an RMSNorm whose weight is marked sequence-parallel.

megatron-core 0.16.1's ``WrappedTorchNorm`` (the local spec's norm without TE/Apex) asserts that
sequence parallelism is off. With it on, every TP rank normalises a different slice of the sequence,
so the norm weights' gradients must be all-reduced over the TP group; ``finalize_model_grads`` does
that for parameters flagged ``sequence_parallel``. This replacement builds the same
``torch.nn.RMSNorm`` and sets that flag. It is applied only for ``--sequence-parallel`` launches and
only while the local spec still uses ``WrappedTorchNorm`` (a norm from the patch layer's kernels
takes precedence).
"""

from __future__ import annotations

import torch

from mindspeed_llm.patches.registry import registry

GROUP = "training-sequence-parallel"
TARGET = "megatron.core.transformer.torch_norm.WrappedTorchNorm"


class SequenceParallelTorchNorm:
    """Constructor-compatible stand-in for ``WrappedTorchNorm`` that supports sequence parallelism (RMSNorm)."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
        if config.normalization != "RMSNorm" or config.layernorm_zero_centered_gamma:
            raise ValueError("--sequence-parallel with the local spec supports --normalization RMSNorm only")
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def enable_sequence_parallel_norm() -> bool:
    """Swap the local spec's norm for :class:`SequenceParallelTorchNorm` if it is still ``WrappedTorchNorm``."""
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer import torch_norm

    if registry.patches(GROUP) and registry.is_active(TARGET, GROUP):
        return True
    if gpt_layer_specs.LNImpl is not torch_norm.WrappedTorchNorm:
        return False  # someone (the kernels' RMSNorm, TE, Apex) already provides the norm
    registry.register(TARGET, SequenceParallelTorchNorm, group=GROUP,
                      description="RMSNorm with sequence-parallel weights (--sequence-parallel, local spec)")
    registry.apply(GROUP)
    return True
