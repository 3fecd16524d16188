"""megatron-core's inference pieces off CUDA (group ``inference``, applied by inference.py).

megatron-core 0.16.1's ``inference/communication_utils`` asserts ``tensor.is_cuda`` before it
broadcasts from the last pipeline stage; on the CPU (and on NPUs, whose tensors are not CUDA
tensors) the check becomes "on the device this process computes on". Nothing else in the pieces
inference.py uses (``GPTInferenceWrapper``, ``StaticInferenceContext``, the p2p helpers) needs more
than the device layer's redirections.
"""

from __future__ import annotations

import torch

from mindspeed_llm.patches.registry import PatchRegistry

GROUP = "inference"
_TARGET = "megatron.core.inference.communication_utils._is_cuda"


def _on_device(device: str):
    """megatron's ``_is_cuda`` check for ``device``: the tensor exists and lives there."""

    def is_on_device(tensor: torch.Tensor) -> None:
        assert tensor is not None
        assert tensor.device.type == device, f"expected a {device} tensor, got one on {tensor.device}"

    return is_on_device


def enable_inference_patches(registry: PatchRegistry, device: str) -> list[str]:
    """Apply the inference group for ``device`` (nothing on CUDA); returns the patched targets."""
    if device == "cuda":
        return []
    if not registry.patches(GROUP):
        registry.register(_TARGET, _on_device(device), group=GROUP,
                          description="inference broadcasts accept tensors of the compute device")
    registry.apply(GROUP)
    return [_TARGET]
