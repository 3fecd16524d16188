"""``--ckpt-format torch_dist``: training checkpoints through megatron-core's ``dist_checkpointing``.

Megatron-LM's default format and on-disk layout: ``iter_XXXXXXX/`` holds the sharded tensors
(torch.distributed.checkpoint files ``__R_N.distcp`` and ``.metadata``), ``common.pt`` (the
objects every rank shares: args, iteration, scheduler, FLOPs) and ``metadata.json`` (the format
marker), with ``latest_checkpointed_iteration.txt`` beside it. The state is what Megatron-LM
core_v0.16.1 saves: the model's ``sharded_state_dict`` (tensors with their global offsets, so a
load can use another TP/PP grid), the optimizer's (the distributed optimizer as ``dp_reshardable``),
the scheduler, the RNG states of ``(pp, tp)`` ranks (replicated over DP, as Megatron-LM saves them
without ``--data-parallel-random-init``), the iteration and the args.

Every rank writes into ``iter_XXXXXXX.tmp/``; global rank 0 renames it once all ranks are done and
then rewrites the tracker, so a run killed during a save leaves the previous checkpoint as the one
that loads (as the legacy format does).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from typing import Any

import torch

from mindspeed_llm.checkpoint import layout
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.training.state import TrainState

logger = logging.getLogger(__name__)

FORMAT = "torch_dist"


def iteration_dir(root: str, iteration: int | str) -> str:
    """``root/iter_XXXXXXX`` (or ``root/release``)."""
    return os.path.join(os.fspath(root), layout.iteration_dir_name(iteration))


def is_dist_checkpoint(root: str, iteration: int | str) -> bool:
    """True when ``root``'s iteration folder is a megatron-core distributed checkpoint (``metadata.json``)."""
    from megatron.core import dist_checkpointing

    folder = iteration_dir(root, iteration)
    return os.path.isdir(folder) and dist_checkpointing.check_is_distributed_checkpoint(folder)


def load_common(root: str, iteration: int | str) -> dict:
    """The shared (non-sharded) part of a distributed checkpoint: args, iteration, scheduler, ..."""
    from megatron.core import dist_checkpointing

    folder = iteration_dir(root, iteration)
    try:
        with layout.allowed_globals():  # the args are an argparse.Namespace
            return dist_checkpointing.load_common_state_dict(folder)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}/common.pt not found: the distributed checkpoint is incomplete") from None


def sharded_metadata(args: argparse.Namespace) -> dict:
    """Megatron-LM core_v0.16.1's content metadata for ``sharded_state_dict`` (``dp_reshardable`` optimizer)."""
    from megatron.core import parallel_state as ps

    metadata: dict[str, Any] = {}
    if args.use_distributed_optimizer:
        metadata["distrib_optim_sharding_type"] = "dp_reshardable"
    metadata["singleton_local_shards"] = False
    metadata["chained_optim_avoid_prefix"] = True
    metadata["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    return metadata


def _rng_sharded_object(args: argparse.Namespace):
    """This rank's RNG states as Megatron-LM shards them: one object per (pp, tp) rank, DP ranks replicas."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from mindspeed_llm.training.checkpointing import get_rng_state

    states = [get_rng_state()]
    dp_size = ps.get_data_parallel_world_size()
    if getattr(args, "data_parallel_random_init", False) and dp_size > 1:
        states = [None] * dp_size
        torch.distributed.all_gather_object(states, get_rng_state(), group=ps.get_data_parallel_group())
    return ShardedObject("rng_state", states,
                         (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def _unwrap(chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)


def _state_dict(model: list, optimizer, scheduler, rng, metadata: dict, *, is_loading: bool,
                extra: dict | None = None) -> dict:
    """The sharded state dict of Megatron-LM's ``generate_state_dict`` (model, optimizer, scheduler, RNG)."""
    state: dict[str, Any] = dict(extra or {})
    for i, chunk in enumerate(model):
        state["model" if len(model) == 1 else f"model{i}"] = _unwrap(chunk).sharded_state_dict(metadata=metadata)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if rng is not None:
        state["rng_state"] = rng
    return state


# ---- save --------------------------------------------------------------------------------------------------------
def save_checkpoint(run: TrainState, model: list, optimizer, scheduler, args: argparse.Namespace) -> None:
    """Save the run at ``run.iteration`` under ``--save`` in Megatron-LM's torch_dist layout (collective)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.utils import _clean_metadata_for_serialization

    from mindspeed_llm.training.checkpointing import _pause_for_test, args_to_save

    t0 = time.time()
    iteration = run.iteration
    final = iteration_dir(args.save, iteration)
    staging = final + ".tmp"
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
        os.makedirs(staging)
    torch.distributed.barrier()

    metadata = sharded_metadata(args)
    saved_args = args_to_save(args)
    extra = {"args": saved_args, "checkpoint_version": layout.CHECKPOINT_VERSION,
             **run.checkpoint_fields(saved_args)}
    rng = None if args.no_save_rng else _rng_sharded_object(args)
    state = _state_dict(model, None if args.no_save_optim else optimizer, scheduler, rng, metadata,
                        is_loading=False, extra=extra)
    try:
        dist_checkpointing.save(state, staging, get_default_save_sharded_strategy(FORMAT),
                                content_metadata=_clean_metadata_for_serialization(metadata))
    except BaseException:
        if rank0:  # nothing half-written stays behind; the tracker still names the previous checkpoint
            shutil.rmtree(staging, ignore_errors=True)
        raise
    torch.distributed.barrier()
    if rank0:
        _pause_for_test(iteration)
        if os.path.isdir(final):  # saving an iteration again (e.g. after a resume): replace it whole
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        layout.write_tracker(args.save, iteration)
        logger.info("  successfully saved checkpoint from iteration %7d to %s [ torch_dist, t %d, p %d ] (%.1f s)",
                    iteration, args.save, ps.get_tensor_model_parallel_world_size(),
                    ps.get_pipeline_model_parallel_world_size(), time.time() - t0)
    torch.distributed.barrier()


# ---- load --------------------------------------------------------------------------------------------------------
def _grid(ckpt_args: argparse.Namespace, args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    return ((getattr(ckpt_args, "tensor_model_parallel_size", tp), getattr(ckpt_args, "pipeline_model_parallel_size",
                                                                           pp)), (tp, pp))


def _check_optimizer_reshard(args: argparse.Namespace, ckpt_args, content: dict, where: str) -> None:
    """The distributed optimizer's ``dp_reshardable`` state loads only on the same TP/PP grid."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    saved, mine = _grid(ckpt_args, args)
    kind = content.get("distrib_optim_sharding_type")
    if saved != mine and kind not in DistributedOptimizer.checkpoint_fully_reshardable_formats:
        raise CheckpointError(
            f"{where} holds distributed-optimizer state ({kind}) saved at TP={saved[0]} PP={saved[1]}, which "
            f"reshards only over data parallelism: launch with TP={saved[0]} PP={saved[1]}, or add --no-load-optim "
            "to load the weights on this grid with a fresh optimizer"
        )


def _prime_distributed_adam_state(optimizer) -> None:
    """Allocate torch Adam's state (zeros, step 0) before megatron's distributed-optimizer load fills it.

    Without Apex/TE, megatron-core 0.16.1's ``DistributedOptimizer.sharded_state_dict(is_loading=True)``
    reads the ``step`` of every parameter's state and asserts there is exactly one value, which fails
    on a fresh optimizer (no state yet). The values are placeholders the load overwrites.
    """
    from mindspeed_llm.training.checkpointing import inner_torch_optimizers

    for opt in inner_torch_optimizers(optimizer):
        if len(opt.state):
            continue
        for group in opt.param_groups:
            for param in group["params"]:
                opt.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                    "exp_avg_sq": torch.zeros_like(param)}


def _restore_adam_steps(optimizer) -> None:
    """Set each parameter's Adam ``step`` from its param group, as saved, one tensor per parameter.

    Without Apex/TE, megatron-core 0.16.1's distributed optimizer keeps the step in the param groups
    of its checkpoint; its ``dp_reshardable`` load then copies the placeholder step of the loading
    state dict over it (one tensor shared by every parameter), which would restart Adam's bias
    correction at step 0.
    """
    from mindspeed_llm.training.checkpointing import inner_torch_optimizers

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


def load_checkpoint(model: list, optimizer, scheduler, args: argparse.Namespace,
                    iteration: int | str) -> TrainState:
    """Load a torch_dist checkpoint into the model (any TP/PP), optimizer, scheduler and RNG; the run's state.

    Same semantics as the legacy loader (``--finetune``/release: weights only, iteration 0; otherwise
    continue after the saved iteration). The RNG state loads only on the grid it was saved on, the
    distributed optimizer's state only on the same TP/PP (as in Megatron-LM).
    """
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy

    from mindspeed_llm.training.checkpointing import _load_scheduler, _load_weights, set_rng_state

    folder = iteration_dir(args.load, iteration)
    where = f"the checkpoint {args.load} (iteration {iteration}, torch_dist)"
    common = load_common(args.load, iteration)
    ckpt_args = common.get("args") or argparse.Namespace()
    weights_only = iteration == layout.RELEASE or args.finetune
    saved_grid, grid = _grid(ckpt_args, args)

    load_optim = not weights_only and not args.no_load_optim
    if load_optim and getattr(ckpt_args, "no_save_optim", False):
        raise CheckpointError(f"{where} was saved with --no-save-optim: add --no-load-optim --no-load-rng to "
                              "continue from it with a fresh optimizer, or --finetune to start at iteration 0")
    content = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    if load_optim and args.use_distributed_optimizer:
        if "distrib_optim_sharding_type" not in content:  # written before megatron-core 0.13
            content["distrib_optim_sharding_type"] = ("fully_sharded_model_space"
                                                      if getattr(ckpt_args, "ckpt_fully_parallel_save", False)
                                                      else "dp_zero_gather_scatter")
        _check_optimizer_reshard(args, ckpt_args, content, where)
    load_rng = (not weights_only and not args.no_load_rng and saved_grid == grid
                and not getattr(ckpt_args, "no_save_rng", False))
    if not weights_only and not args.no_load_rng and saved_grid != grid and torch.distributed.get_rank() == 0:
        logger.info("%s was saved at TP=%d PP=%d: its RNG state is ignored on this grid", where, *saved_grid)

    metadata = {**content, "dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True)}
    if load_optim and args.use_distributed_optimizer:
        _prime_distributed_adam_state(optimizer)
    # fp32 main params of the distributed optimizer are views of the model's leaf parameters: the
    # in-place copies of the load run without autograd.
    with torch.no_grad():
        sharded = _state_dict(model, optimizer if load_optim else None, scheduler,
                              _rng_sharded_object(args) if load_rng else None, metadata, is_loading=True)
        with layout.allowed_globals():
            state = dist_checkpointing.load(sharded, folder, get_default_load_sharded_strategy(folder))
        check_finite = getattr(args, "check_for_nan_in_loss_and_grad", True)
        for i, chunk in enumerate(model):
            key = "model" if len(model) == 1 else f"model{i}"
            _load_weights(chunk, state[key], folder, key, check_finite)
        if load_optim:
            optimizer.load_state_dict(state["optimizer"])
            if args.use_distributed_optimizer:
                _restore_adam_steps(optimizer)
            _load_scheduler(scheduler, state["opt_param_scheduler"], folder)
        elif hasattr(optimizer, "reload_model_params"):
            optimizer.reload_model_params()  # main (fp32) params from the loaded weights
    if load_rng and "rng_state" in state:
        rng = state["rng_state"]
        dp_rank = ps.get_data_parallel_rank()
        set_rng_state(rng[dp_rank] if getattr(args, "data_parallel_random_init", False) and len(rng) > dp_rank
                      else rng[0])

    run = TrainState()
    if not weights_only:
        run.restore({"iteration": iteration, "args": ckpt_args, **state})
        run.count_older_checkpoint(args)
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        logger.info("  successfully loaded checkpoint from %s [ torch_dist saved at t %d p %d, loaded at t %d p %d ] "
                    "at iteration %s", args.load, *saved_grid, *grid, iteration)
    return run
