"""Fused Adam/AdamW for megatron's optimizer when neither Transformer Engine nor Apex is installed.

megatron-core then falls back to ``torch.optim.Adam``/``AdamW`` with torch's defaults, which on CPU
(and on CUDA without ``foreach``) is the per-parameter loop: five or six elementwise passes over
every parameter and both moments. torch has a fused kernel for the same update on CPU and CUDA
(``fused=True``: one pass per tensor); Megatron-LM uses Apex's fused Adam on GPUs for the same
reason. The math is torch's Adam/AdamW (same formula, moments and bias correction).

``fused`` is an option of each param group, so switching an optimizer that already exists is
setting it there; a ``load_state_dict`` hook keeps it switched after a checkpoint's param groups
(saved with or without it) are loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

FUSED_DEVICE_TYPES = ("cpu", "cuda")


def torch_optimizers(optimizer) -> Iterator[torch.optim.Optimizer]:
    """The torch optimizers inside megatron's wrappers (chained, mixed precision, distributed)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        yield optimizer
        return
    chained = getattr(optimizer, "chained_optimizers", None)
    if chained is not None:  # MoE: dense and expert optimizers; its .optimizer asserts there is one only
        for inner in chained:
            yield from torch_optimizers(inner)
        return
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and inner is not optimizer:
        yield from torch_optimizers(inner)


def _fusable(group: dict) -> bool:
    params = group["params"]
    return bool(params) and all(
        p.device.type in FUSED_DEVICE_TYPES and torch.is_floating_point(p) for p in params
    ) and not group.get("differentiable", False) and not group.get("capturable", False)


def _switch_groups(optimizer: torch.optim.Optimizer) -> int:
    switched = 0
    for group in optimizer.param_groups:
        if _fusable(group):
            group["fused"], group["foreach"] = True, False
            switched += 1
    if switched:
        optimizer.defaults.update(fused=True, foreach=False)
        optimizer._step_supports_amp_scaling = True
    return switched


def _after_load(optimizer: torch.optim.Optimizer) -> None:
    _switch_groups(optimizer)


def use_fused_adam(optimizer) -> int:
    """Switch every torch Adam/AdamW inside ``optimizer`` to torch's fused kernel where its params
    allow it (CPU or CUDA floating-point tensors); return how many param groups were switched."""
    switched = 0
    for inner in torch_optimizers(optimizer):
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        count = _switch_groups(inner)
        if count and not getattr(inner, "_mindspeed_fused_hook", False):
            inner.register_load_state_dict_post_hook(_after_load)
            inner._mindspeed_fused_hook = True
        switched += count
    return switched


def fused_adam_wrapper(get_megatron_optimizer):
    """Wrap megatron's ``get_megatron_optimizer``: what it builds runs torch's fused Adam."""

    @functools.wraps(get_megatron_optimizer)
    def get_megatron_optimizer_fused(*args, **kwargs):
        optimizer = get_megatron_optimizer(*args, **kwargs)
        use_fused_adam(optimizer)
        return optimizer

    return get_megatron_optimizer_fused
