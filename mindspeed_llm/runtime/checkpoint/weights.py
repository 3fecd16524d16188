"""Model weights in and out of checkpoint files, the same for both formats: chunk keys, strict loads.

A LoRA adapter's tensors are the LoRA feature's (``mindspeed_llm.lora.checkpoint``).
"""

from __future__ import annotations

import re

import torch

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError


def unwrap(chunk):
    """The model inside megatron's DDP / Float16Module wrappers."""
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)


def chunk_key(index: int, n_chunks: int) -> str:
    """``model``, or ``model{i}`` per virtual pipeline stage (Megatron-LM's keys)."""
    return "model" if n_chunks == 1 else f"model{index}"


def model_state(model: list) -> dict:
    """``model`` (or ``model0..`` per virtual stage) state dicts."""
    return {chunk_key(i, len(model)): unwrap(chunk).state_dict() for i, chunk in enumerate(model)}


def chunk_state(state: dict, path: str, key: str, n_chunks: int) -> dict:
    """The state dict of one model chunk (``model`` or ``model{i}``) of a rank file."""
    if key in state:
        return state[key]
    if n_chunks == 1:
        raise CheckpointError(
            f"{path} holds {', '.join(k for k in state if k.startswith('model'))} "
            "(virtual pipeline stages): launch with the same --num-layers-per-virtual-pipeline-stage"
        )
    raise CheckpointError(
        f"{path} has no {key}: it was saved without --num-layers-per-virtual-pipeline-stage (or "
        "with another value); launch without virtual pipeline stages"
    )


def load_weights(chunk, state_dict: dict, path: str, key: str, check_finite: bool) -> None:
    """``load_state_dict(strict=True)``; a checkpoint of another model or with NaN/Inf weights is an error."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: '{key}' is not a state dict: the file is not a Megatron checkpoint")
    try:
        unwrap(chunk).load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = (problems or [str(exc).splitlines()[0]])[0]
        first = re.sub(r"copying a param with shape torch.Size\((\[[^]]*\])\) from checkpoint, the shape in "
                       r"current model is torch.Size\((\[[^]]*\])\)\.?", r"checkpoint \1, model \2", first)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{path} does not fit this model: {first[:300]}{more}. It holds another model: fix "
            "the model flags, or point --load at this model's checkpoint"
        ) from None
    if check_finite:
        for name, tensor in state_dict.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(
                    f"{path} holds NaN/Inf in {name} (a run that diverged saved it): load an "
                    f"earlier iteration (edit {layout.TRACKER_FILENAME}), or pass "
                    "--no-check-for-nan-in-loss-and-grad to load it anyway"
                )
