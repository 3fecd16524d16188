"""Model weights in and out of checkpoint files, the same for both formats: chunk keys, strict loads, adapters."""

from __future__ import annotations

import argparse
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


def model_state(model: list, adapter_only: bool = False) -> dict:
    """``model`` (or ``model0..`` per virtual stage) state dicts; ``adapter_only``: the LoRA tensors alone."""
    from mindspeed_llm.lora.keys import lora_state_dict

    def one(chunk) -> dict:
        sd = unwrap(chunk).state_dict()
        return lora_state_dict(sd) if adapter_only else sd

    return {chunk_key(i, len(model)): one(chunk) for i, chunk in enumerate(model)}


def chunk_state(state: dict, path: str, key: str, n_chunks: int) -> dict:
    """The state dict of one model chunk (``model`` or ``model{i}``) of a rank file."""
    if key in state:
        return state[key]
    if n_chunks == 1:
        raise CheckpointError(f"{path} holds {', '.join(k for k in state if k.startswith('model'))} "
                              "(virtual pipeline stages): launch with the same --num-layers-per-virtual-pipeline-stage")
    raise CheckpointError(f"{path} has no {key}: it was saved without --num-layers-per-virtual-pipeline-stage (or "
                          "with another value); launch without virtual pipeline stages")


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
        raise CheckpointError(f"{path} does not fit this model: {first[:300]}{more}. It holds another model: fix "
                              "the model flags, or point --load at this model's checkpoint") from None
    if check_finite:
        for name, tensor in state_dict.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(f"{path} holds NaN/Inf in {name} (a run that diverged saved it): load an "
                                      f"earlier iteration (edit {layout.TRACKER_FILENAME}), or pass "
                                      "--no-check-for-nan-in-loss-and-grad to load it anyway")


# ---- LoRA: base + adapter weights (the adapter's rules are the LoRA feature's) -----------------------------------
def with_adapter(chunk, weights: dict, path: str, adapter: tuple[str, dict] | None, key: str,
                 n_chunks: int) -> dict:
    """The weights to load into a LoRA model: --load's base tensors plus the adapter's.

    The adapter comes from --lora-load's file, else from --load's own file when it holds one (a full
    LoRA checkpoint), else it keeps its initial values (a base checkpoint: the adapter starts fresh).
    """
    from mindspeed_llm.lora.keys import is_lora_key

    if not isinstance(weights, dict):
        return weights  # load_weights names the problem
    base = {k: v for k, v in weights.items() if not is_lora_key(k)}
    if weights and not any(k.endswith(".weight") for k in base):
        raise CheckpointError(f"{path} holds only LoRA adapter tensors (saved with --lora-ckpt-filter): pass the "
                              "base model's checkpoint as --load and this folder as --lora-load")
    if adapter is not None:
        lora_path, lora_state = adapter
        lora = chunk_state(lora_state, lora_path, key, n_chunks)
        lora = {k: v for k, v in lora.items() if is_lora_key(k)} if isinstance(lora, dict) else {}
        if not lora:
            raise CheckpointError(f"{lora_path} holds no LoRA adapter tensors: --lora-load must be the --save folder "
                                  "of a LoRA run (--lora-target-modules)")
        return {**base, **lora}
    if len(base) < len(weights):
        return weights  # a full LoRA checkpoint: loaded strictly, adapter included
    own = {k: v for k, v in unwrap(chunk).state_dict().items() if is_lora_key(k)}
    return {**base, **own}


def check_lora_alpha(args: argparse.Namespace, source: tuple[str, dict]) -> None:
    """An adapter trained with another --lora-alpha would load and silently scale differently: refuse it."""
    from mindspeed_llm.lora.keys import is_lora_key

    path, state = source
    recorded = getattr(state.get("args"), "lora_alpha", None)
    holds_adapter = any(is_lora_key(k) for name, sd in state.items() if name.startswith("model") and isinstance(sd, dict)
                        for k in sd)
    if holds_adapter and recorded is not None and float(recorded) != float(args.lora_alpha):
        raise CheckpointError(f"{path} holds an adapter trained with --lora-alpha {recorded:g}, this launch has "
                              f"--lora-alpha {args.lora_alpha:g}: pass --lora-alpha {recorded:g}")
