"""Optimizer and scheduler state in and out of megatron-core 0.16.1, without Apex / Transformer Engine.

Three gaps of megatron-core's distributed optimizer with torch's own Adam are closed here, where both
formats load: a shared ``step`` tensor (:func:`untie_adam_steps`), the legacy parameter-state file's
missing ``step`` (:func:`load_distributed_optimizer_state`), and the torch_dist load's assertion on a
fresh optimizer and its placeholder step (:func:`prime_distributed_adam_state`, :func:`restore_adam_steps`).
"""

from __future__ import annotations

import os
import re
import zipfile

import torch

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError

_SCHEDULER_MISMATCH = re.compile(r"class input value (.*) and checkpoint ?value (.*) for (.*) do not match")


def inner_torch_optimizers(optimizer) -> list:
    """The torch optimizers inside megatron's (chained) optimizer."""
    return [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]


def holds_parameter_state(optimizer) -> bool:
    """Whether megatron-core's ``save_parameter_state`` writes (and ``load_parameter_state`` reads) the
    ``distrib_optim.pt`` file on this rank: data-parallel rank 0 of any of its distributed optimizers' groups.

    Each expert-parallel rank's folder holds one, except where the experts have no optimizer (LoRA freezes
    them): then only the dense optimizer's data-parallel rank 0 holds the whole state.
    """
    return any(opt.data_parallel_group.rank() == 0
               for opt in getattr(optimizer, "chained_optimizers", [optimizer])
               if hasattr(opt, "get_parameter_state_dp_zero"))


def untie_adam_steps(optimizer) -> None:
    """Give each parameter its own ``step`` tensor after megatron's distributed-optimizer load.

    Without Apex/TE, ``DistributedOptimizer.load_state_dict`` gives every parameter the *same* step
    tensor; torch Adam increments it in place once per parameter, so each needs its own copy for a
    resumed run to match the unbroken one.
    """
    for opt in inner_torch_optimizers(optimizer):
        for state in opt.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def load_distributed_optimizer_state(optimizer, path: str) -> None:
    """``load_parameter_state`` of megatron-core 0.16.1, working around two of its gaps without TE/Apex.

    Native torch Adam keeps a per-parameter ``step`` that ``get_parameter_state_dp_zero`` does not
    save, yet the loader copies every state key (KeyError 'step'); the step is already restored from
    the param groups by ``load_state_dict`` (one tensor shared by all parameters, which torch Adam
    would increment once per parameter), so it is set aside meanwhile and put back as copies. fp32 main
    params are views of the model's leaf parameters, so the copies run under ``no_grad``.
    """
    if holds_parameter_state(optimizer):
        check_zip_file(path)
    steps = [
        (state, state.pop("step"))
        for opt in inner_torch_optimizers(optimizer)
        for state in opt.state.values()
        if "step" in state
    ]
    try:
        with torch.no_grad():
            optimizer.load_parameter_state(path)
    finally:
        for state, step in steps:
            state["step"] = step
        untie_adam_steps(optimizer)


def prime_distributed_adam_state(optimizer) -> None:
    """Allocate torch Adam's state (zeros, step 0) before megatron's distributed-optimizer load fills it.

    Without Apex/TE, megatron-core 0.16.1's ``DistributedOptimizer.sharded_state_dict(is_loading=True)``
    reads the ``step`` of every parameter's state and asserts there is exactly one value, which fails
    on a fresh optimizer (no state yet). The values are placeholders the load overwrites.
    """
    for opt in inner_torch_optimizers(optimizer):
        if len(opt.state):
            continue
        for group in opt.param_groups:
            for param in group["params"]:
                opt.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                    "exp_avg_sq": torch.zeros_like(param)}


def restore_adam_steps(optimizer) -> None:
    """Set each parameter's Adam ``step`` from its param group, as saved, one tensor per parameter.

    Without Apex/TE, megatron-core 0.16.1's distributed optimizer keeps the step in the param groups
    of its checkpoint; its ``dp_reshardable`` load then copies the placeholder step of the loading
    state dict over it (one tensor shared by every parameter), which would restart Adam's bias
    correction at step 0.
    """
    for opt in inner_torch_optimizers(optimizer):
        for group in opt.param_groups:
            if group.get("step") is None:
                continue
            for param in group["params"]:
                if "step" in opt.state.get(param, {}):
                    # Where torch Adam keeps it: on the parameter's device when fused/capturable.
                    device = param.device if group.get("fused") or group.get("capturable") else "cpu"
                    opt.state[param]["step"] = torch.tensor(float(group["step"]), dtype=torch.float32,
                                                            device=device)


def load_scheduler(scheduler, state: dict, path: str) -> None:
    """megatron-core's scheduler load; a schedule that differs from the launch's names both flags."""
    try:
        scheduler.load_state_dict(state)
    except AssertionError as exc:
        found = _SCHEDULER_MISMATCH.search(str(exc))
        if not found:
            raise
        launch, saved, name = found.groups()
        unit = " (in samples)" if "iterations" in name else ""
        raise CheckpointError(
            f"{path} was trained with another LR/WD schedule: {name}{unit} is {launch} in this launch but "
            f"{saved} in the checkpoint (e.g. another --train-iters, --lr, --lr-decay-iters or "
            "--lr-warmup-iters). Pass --override-opt_param-scheduler to use this launch's schedule, or "
            "--use-checkpoint-opt_param-scheduler to keep the checkpoint's"
        ) from None


def check_zip_file(path: str) -> None:
    """CheckpointError unless ``path`` is a non-empty torch zip file (before a collective load reads it)."""
    if os.path.getsize(path) == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is empty or damaged (not a torch zip file): restore it, or write an "
                              f"earlier iteration into {layout.TRACKER_FILENAME} to load that one")
