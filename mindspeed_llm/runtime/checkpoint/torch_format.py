"""``--ckpt-format torch``: Megatron's legacy layout, detected, read, loaded and saved here only.

One ``model_optim_rng.pt`` per (TP, PP) rank (:mod:`.layout`), holding the header of
:func:`~mindspeed_llm.runtime.checkpoint.record.file_header` (``args``, ``checkpoint_version`` 3.0,
``iteration``, ``num_floating_point_operations_so_far``, the record), ``model`` (``model0..N`` with
virtual pipeline stages) and, when training saves, ``optimizer``, ``opt_param_scheduler`` and
``rng_state`` (one entry per data-parallel rank). With ``--use-distributed-optimizer`` the sharded
parameter state is gathered to DP rank 0 and saved beside it as ``distrib_optim.pt``, as Megatron-LM
does. The trainer's save writes every file under a temporary name, renames them once every rank is
done, and rewrites the tracker last (:func:`publish_save`), so a run killed during a save leaves the
previous checkpoint as the one that loads. The converter writes rank files one at a time
(:func:`write_rank_file`) into a staging folder it swaps in whole.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from typing import Any

import torch

from mindspeed_llm.lora import checkpoint as lora_checkpoint
from mindspeed_llm.lora.config import LoraConfig
from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint.locate import last_complete_checkpoint
from mindspeed_llm.runtime.checkpoint.optimizer_state import (
    holds_parameter_state,
    load_distributed_optimizer_state,
    load_scheduler,
)
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, file_header, read_header
from mindspeed_llm.runtime.checkpoint.weights import chunk_key, chunk_state, load_weights, model_state
from mindspeed_llm.runtime.errors import SaveError, fail_together
from mindspeed_llm.runtime.state import TrainState

logger = logging.getLogger("mindspeed_llm.runtime.checkpoint")

FORMAT = "torch"
DISTRIB_OPTIM_FILENAME = "distrib_optim.pt"


def detect(folder: str) -> bool:
    """True when an iteration folder holds ``mp_rank_*`` folders."""
    return any(layout.RANK_DIR.fullmatch(name) and os.path.isdir(os.path.join(folder, name))
               for name in os.listdir(folder))


def read_record(path: str) -> CheckpointRecord:
    """The record of one rank file (from its ``args`` when it was written without one)."""
    return read_header(layout.load_rank_file(path, mmap=True), path)


def write_rank_file(root: str, iteration: int | str, tp_rank: int, pp_rank: int, pp_size: int,
                    record: CheckpointRecord, base_args: argparse.Namespace | None, model: dict,
                    ep_rank: int = 0) -> str:
    """One rank's file holding the header and ``model`` only (what the converter writes), written
    atomically (``ep_rank``: of the record's expert-parallel size)."""
    state = {**file_header(record, base_args), "model": model}
    return layout.save_rank_state(root, iteration, tp_rank, pp_rank, pp_size, state, crc32=False,
                                  ep_rank=ep_rank, ep_size=record.layout.ep or 1)


# ---- save (the trainer's, collective) ----------------------------------------------------------------------
def save(state: TrainState, record: CheckpointRecord, base_args: argparse.Namespace, model: list, optimizer,
         scheduler, args: argparse.Namespace) -> None:
    """Save the run under ``--save`` at ``state.iteration`` (collective: every rank calls it).

    ``state.rng`` is this rank's RNG state (None with ``--no-save-rng``); DP rank 0 of each (TP, PP)
    rank writes the file. A failed write, or a signal, removes this save's temporary files and leaves
    the tracker naming the previous checkpoint.
    """
    from megatron.core import parallel_state as ps

    t0 = time.time()
    iteration, save_dir = state.iteration, args.save
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    # Megatron-LM's rule: the CP ranks of a data-parallel replica hold the same weights, so rank 0 of
    # the data-parallel x CP group writes them (and the distributed optimizer shards over that group).
    dp_group = ps.get_data_parallel_group(with_context_parallel=True)
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    pp_size = args.pipeline_model_parallel_size
    ep_size = getattr(args, "expert_model_parallel_size", 1) or 1
    ep_rank = ps.get_expert_model_parallel_rank() if ep_size > 1 else 0
    folder = layout.checkpoint_dir_for(save_dir, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size)
    # With experts (EP > 1) each EP rank's folder holds its experts: rank 0 of the expert-data-parallel group
    # writes it (Megatron-LM's rule), and the distributed optimizer writes the dense and expert shards there.
    writer = (ps.get_expert_data_parallel_rank() == 0) if ep_size > 1 else dp_rank == 0

    rng_states = None
    if state.rng is not None:
        rng_states = [None] * ps.get_data_parallel_world_size(with_context_parallel=True)
        torch.distributed.all_gather_object(rng_states, state.rng, group=dp_group)

    renames: list[tuple[str, str]] = []
    temporaries: list[str] = []
    created: list[str] = []
    try:
        with fail_together():
            if args.use_distributed_optimizer and not args.no_save_optim:
                target = os.path.join(folder, DISTRIB_OPTIM_FILENAME)
                _write(folder, lambda: _makedirs(folder, created), args)
                # Collective over the DP group (the state is gathered first); DP rank 0 writes.
                if holds_parameter_state(optimizer):
                    temporaries.append(target + ".tmp")
                    _write(target + ".tmp", lambda: optimizer.save_parameter_state(target + ".tmp"), args)
                    renames.append((target + ".tmp", target))
                else:
                    optimizer.save_parameter_state(target + ".tmp")
            if writer:
                ckpt: dict[str, Any] = file_header(record, base_args)
                ckpt.update(lora_checkpoint.saved_weights(model_state(model), LoraConfig.from_args(args)))
                if not args.no_save_optim:
                    ckpt["optimizer"] = optimizer.state_dict()
                    ckpt["opt_param_scheduler"] = scheduler.state_dict()
                if rng_states is not None:
                    ckpt["rng_state"] = rng_states
                _write(folder, lambda: _makedirs(folder, created), args)
                target = os.path.join(folder, layout.MODEL_FILENAME)
                temporaries.append(target + ".tmp")
                _write(target + ".tmp", lambda: torch.save(ckpt, target + ".tmp"), args)
                renames.append((target + ".tmp", target))
        publish_save(args, iteration, renames, created, temporaries)
    except BaseException:
        _remove_partial_save(temporaries, created)
        raise
    if torch.distributed.get_rank() == 0:
        logger.info("  successfully saved checkpoint from iteration %7d to %s [ t %d/%d, p %d/%d ] (%.1f s)",
                    iteration, save_dir, tp_rank + 1, args.tensor_model_parallel_size, pp_rank + 1, pp_size,
                    time.time() - t0)


def publish_save(args: argparse.Namespace, iteration: int, renames: list[tuple[str, str]], created: list[str],
                 temporaries: list[str]) -> None:
    """Rename every rank's written files into place, then let the tracker name ``iteration`` (collective).

    Until this runs the new files exist only under their temporary names: a run killed before it
    keeps the previous checkpoint.
    """
    with fail_together():
        for tmp, final in renames:
            _write(tmp, functools.partial(os.replace, tmp, final), args)
    created.clear()  # the renamed files belong to a complete rank folder now
    with fail_together():  # every rank's file is in place: the tracker may name this iteration
        if _writes_tracker(args):
            tracker = os.path.join(args.save, layout.TRACKER_FILENAME)
            temporaries.append(tracker + ".tmp")
            _write(tracker + ".tmp", lambda: layout.write_tracker(args.save, iteration), args)


def _writes_tracker(args: argparse.Namespace) -> bool:
    """Global rank 0 writes the tracker; with --no-shared-storage the first process of every node does."""
    if args.no_shared_storage:
        return int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())) == 0
    return torch.distributed.get_rank() == 0


def _write_failure(path: str, exc: BaseException) -> str:
    """Why writing ``path`` failed, as far as can be told (torch's zip writer often drops errno)."""
    from mindspeed_llm.io_errors import describe_os_error, os_error_of

    os_error = os_error_of(exc)
    if os_error is not None:
        return describe_os_error(os_error)
    import resource
    import shutil

    try:
        if shutil.disk_usage(os.path.dirname(path) or ".").free < 64 * 1024 * 1024:
            return "the disk is full"
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return "the file-size limit (ulimit -f) was reached"
    return "write failed: disk full or quota reached?"


def _write(path: str, write, args: argparse.Namespace) -> None:
    """Run ``write()`` (which creates ``path``); a failed write removes ``path`` and raises SaveError."""
    from mindspeed_llm.io_errors import interrupt_of

    try:
        write()
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            os.remove(path)
        interrupt = interrupt_of(exc)
        if interrupt is not None:  # a signal torch.save wrapped in its RuntimeError: an interrupt, not a disk
            raise interrupt from None
        raise SaveError(
            f"could not write {path} ({_write_failure(path, exc)}); removed it, the last complete "
            f"checkpoint stays: {last_complete_checkpoint(args.save)}. Free space there or give "
            "another --save"
        ) from None


def _remove_partial_save(files: list[str], folders: list[str]) -> None:
    """Delete this rank's temporary files and the folders it created for them (signals held meanwhile)."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for path in files:
            with contextlib.suppress(OSError):
                os.remove(path)
        for folder in folders:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty: another rank's finished file keeps it
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _makedirs(folder: str, created: list[str]) -> None:
    """``os.makedirs`` that records, deepest last, the folders it created."""
    missing = []
    parent = folder
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(folder, exist_ok=True)
    created.extend(missing)  # deepest first: rmdir order


# ---- load --------------------------------------------------------------------------------------------------
def load(model: list, optimizer, scheduler, args: argparse.Namespace, iteration: int | str) -> TrainState:
    """Load ``--load`` at ``iteration`` into the model (strict), optimizer and scheduler; the run's state.

    ``--finetune`` (and ``release`` checkpoints) load weights only and start at iteration 0. Otherwise
    training continues after the saved iteration, as Megatron-LM does. The returned state carries this
    rank's RNG states unless ``--no-load-rng`` (the caller restores them).
    """
    from megatron.core import parallel_state as ps

    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    with fail_together():  # a damaged file on one rank stops every rank, with one line from that rank
        run = _load_rank_checkpoint(model, optimizer, scheduler, args, iteration)
    if torch.distributed.get_rank() == 0:
        logger.info(
            "  successfully loaded checkpoint from %s [ t %d/%d, p %d/%d ] at iteration %s%s",
            args.load,
            tp_rank + 1,
            args.tensor_model_parallel_size,
            pp_rank + 1,
            pp_size,
            iteration,
            " (--finetune: weights only, starting at iteration 0)" if args.finetune else "",
        )
    sys.stdout.flush()
    return run


def _load_rank_checkpoint(model: list, optimizer, scheduler, args: argparse.Namespace,
                          iteration: int | str) -> TrainState:
    """This rank's part of :func:`load` (no collective outside the data-parallel group)."""
    from megatron.core import parallel_state as ps

    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    # MoE: this rank's experts are in its EP rank's file (Megatron-LM's mp_rank_TT[_PPP]_EEE).
    ep_size = getattr(args, "expert_model_parallel_size", 1) or 1
    ep_rank = ps.get_expert_model_parallel_rank() if ep_size > 1 else 0
    path = layout.checkpoint_file_for(args.load, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size)
    if not os.path.isfile(path):
        ep_part = f", EP rank {ep_rank}" if ep_size > 1 else ""
        raise CheckpointError(f"{path} not found: the checkpoint in {args.load} is incomplete for TP rank "
                              f"{tp_rank}, PP rank {pp_rank}{ep_part}")
    state = layout.load_rank_file(path, mmap=False)
    read_header(state, path)  # a record this version cannot read is refused before anything loads
    check_finite = getattr(args, "check_for_nan_in_loss_and_grad", True)
    lora = LoraConfig.from_args(args)
    # With --lora-load the run's state is the adapter checkpoint's (lora.checkpoint.AdapterSource).
    adapter = lora_checkpoint.adapter_source(args, tp_rank, pp_rank, pp_size, ep_rank=ep_rank,
                                             ep_size=ep_size)
    if adapter is not None and not adapter.fresh:
        iteration = adapter.iteration
    release = iteration == layout.RELEASE
    weights_only = release or args.finetune or (adapter is not None and adapter.fresh)

    for i, chunk in enumerate(model):
        key = chunk_key(i, len(model))
        weights = chunk_state(state, path, key, len(model))
        weights = lora_checkpoint.weights_with_adapter(lora, chunk, weights, (path, state), adapter, key,
                                                       len(model))
        load_weights(chunk, weights, path, key, check_finite)
    if adapter is not None and not adapter.fresh:
        path, state = adapter.path, adapter.state  # optimizer, scheduler, RNG and iteration come from it

    optimizer_loaded = False
    if not weights_only and not args.no_load_optim:
        if "optimizer" not in state:
            raise CheckpointError(
                f"{path} holds model weights only (no optimizer state; convert_ckpt.py writes such files): "
                "add --no-load-optim --no-load-rng to continue from it with a fresh optimizer, or "
                "--finetune to start at iteration 0"
            )
        launch_lrs = [(group.get("max_lr"), group.get("min_lr")) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"{path}: its optimizer state does not fit this model ({reason}): fix the "
                "model and optimizer flags, or add --no-load-optim to load the weights only"
            ) from None
        if args.use_distributed_optimizer:
            optim_path = os.path.join(os.path.dirname(path), DISTRIB_OPTIM_FILENAME)
            if holds_parameter_state(optimizer) and not os.path.isfile(optim_path):
                raise CheckpointError(f"{optim_path} not found: the checkpoint was saved without "
                                      "--use-distributed-optimizer; add --no-load-optim to load its weights")
            load_distributed_optimizer_state(optimizer, optim_path)
        if "opt_param_scheduler" not in state:
            raise CheckpointError(
                f"{path} holds no opt_param_scheduler: add --no-load-optim to load the weights "
                "with a fresh optimizer and schedule"
            )
        if args.override_opt_param_scheduler:
            # The param groups carry max_lr/min_lr too (megatron-core 0.16.1 sets them from --lr/--min-lr) and
            # optimizer.load_state_dict brought back the checkpoint's: the launch's values are the ones asked
            # for.
            for group, (max_lr, min_lr) in zip(optimizer.param_groups, launch_lrs):
                if max_lr is not None:
                    group["max_lr"], group["min_lr"] = max_lr, min_lr
        load_scheduler(scheduler, state["opt_param_scheduler"], path)
        optimizer_loaded = True
    if not optimizer_loaded and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()  # main (fp32) params from the loaded weights

    if weights_only:
        return TrainState()
    rng = None
    if not args.no_load_rng:
        saved = state.get("rng_state")
        if saved:
            dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
            rng = saved[dp_rank] if len(saved) > dp_rank else saved[0]
        else:
            logger.info("%s holds no RNG state: keeping the seeded generators", path)
    progress = read_header(state, path, iteration=0 if release else int(iteration)).progress
    return TrainState.from_progress(progress, rng=rng)

