"""``--ckpt-format torch_dist``: megatron-core's ``dist_checkpointing``, detected, read, loaded and saved here
only.

Megatron-LM's default format and on-disk layout: ``iter_XXXXXXX/`` holds the sharded tensors
(torch.distributed.checkpoint files ``__R_N.distcp`` and ``.metadata``), ``common.pt`` (the
objects every rank shares: the header of :func:`~mindspeed_llm.runtime.checkpoint.record.file_header`,
the scheduler) and ``metadata.json`` (the format marker), with ``latest_checkpointed_iteration.txt``
beside it. The state is what Megatron-LM core_v0.16.1 saves: the model's ``sharded_state_dict`` (tensors with
their global offsets, so a load can use another TP/PP grid), the optimizer's (the distributed optimizer as
``dp_reshardable``), the scheduler, the RNG states of ``(pp, tp)`` ranks (replicated over DP, as Megatron-LM
saves them without ``--data-parallel-random-init``), the iteration and the args.

Every rank writes into ``iter_XXXXXXX.tmp/``; global rank 0 renames it once all ranks are done and
then rewrites the tracker (:func:`publish_save`), so a run killed during a save leaves the previous
checkpoint as the one that loads (as the legacy format does).

The converter reads the model's tensors whole, in one process (:func:`read_model_tensors`): each is
stored once with its global shape, whatever TP/PP/VPP wrote it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from typing import Any

import torch

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError
from mindspeed_llm.runtime.checkpoint.optimizer_state import (
    load_scheduler,
    prime_distributed_adam_state,
    restore_adam_steps,
)
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, file_header, read_header
from mindspeed_llm.runtime.checkpoint.weights import chunk_key, load_weights, unwrap
from mindspeed_llm.runtime.state import TrainState, get_rng_state

logger = logging.getLogger("mindspeed_llm.runtime.checkpoint")

FORMAT = "torch_dist"
MARKER = "metadata.json"  # what megatron-core's check_is_distributed_checkpoint reads
COMMON = "common.pt"
TENSORS_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shard files
SHARD_SUFFIX = ".distcp"
_NOT_MODEL = ("optimizer.", "rng_state", "rerun_state_machine")


def detect(folder: str) -> bool:
    """True when an iteration folder holds megatron-core's distributed-checkpoint marker."""
    return os.path.isfile(os.path.join(folder, MARKER))


def looks_distributed(folder: str) -> bool:
    """True when a folder without the marker holds other torch_dist files (a damaged torch_dist save)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return any(n in (COMMON, TENSORS_METADATA) or n.endswith(SHARD_SUFFIX) for n in names)


_RESTORE = f"restore it, or write an earlier iteration into {layout.TRACKER_FILENAME} to load that one"


def _damaged(path: str, what: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"{path} {what}: the torch_dist checkpoint is damaged; {_RESTORE}")


def _reason(exc: BaseException) -> str:
    """The first line of an exception, short (a reader's message, not its traceback)."""
    first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return first or type(exc).__name__


@contextlib.contextmanager
def quiet_megatron():
    """megatron-core 0.16.1 calls torch's deprecated ``load_state_dict``/``save_state_dict``, ShardedTensor:
    their FutureWarnings (with a site-packages path) are for megatron's developers, not for a user loading a
    checkpoint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning,
                                module=r"megatron\.core\.dist_checkpointing")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*_state_dict` is deprecated")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"Please use DTensor instead")
        yield


_WRITER_LOGGER = "megatron.core.dist_checkpointing.strategies.filesystem_async"


def _not_a_worker_failure(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "encountered an error" in record.getMessage())


@contextlib.contextmanager
def quiet_writer_failure():
    """megatron-core's writer logs ``Local process N encountered an error: ...`` at ERROR level, then raises
    the same error; :func:`save` reports that error as one line (:func:`_save_failure`), so the log record is
    dropped while the save runs (that record only: the writer's other records pass)."""
    writer = logging.getLogger(_WRITER_LOGGER)
    writer.addFilter(_not_a_worker_failure)
    try:
        yield
    finally:
        writer.removeFilter(_not_a_worker_failure)


def check_folder(folder: str) -> None:
    """Everything megatron-core will read, checked before it does: the marker (JSON), ``common.pt``, the
    tensors' ``.metadata`` (readable) and every shard file it names, present with at least the bytes it
    records. A failure is one :class:`DamagedCheckpointError` line naming the file."""
    marker = os.path.join(folder, MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"{marker} not found: the torch_dist checkpoint is incomplete (the save did not finish or the "
            f"folder is damaged); {_RESTORE}"
        ) from None
    except (OSError, ValueError) as exc:
        raise _damaged(marker, f"cannot be read ({_reason(exc)})") from None
    if not isinstance(content, dict) or "sharded_backend" not in content:
        raise _damaged(marker, "is not megatron-core's metadata.json (no sharded_backend)")
    common = os.path.join(folder, COMMON)
    if not os.path.isfile(common):
        raise CheckpointError(f"{common} not found: the distributed checkpoint is incomplete; {_RESTORE}")
    if os.path.getsize(common) == 0:
        raise _damaged(common, "is empty (0 bytes)")
    index = os.path.join(folder, TENSORS_METADATA)
    if not os.path.isfile(index):
        raise CheckpointError(
            f"{index} not found: the torch_dist checkpoint has no index of its tensors; {_RESTORE}"
        )
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(folder).read_metadata().storage_data
        needed: dict[str, int] = {}
        for info in storage.values():
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    except Exception as exc:  # noqa: BLE001 - unpickling junk fails in many ways
        raise _damaged(index, f"cannot be read ({type(exc).__name__}: {_reason(exc)})") from None
    for name, size in sorted(needed.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} not found, but {index} names it: the torch_dist checkpoint is "
                                  f"incomplete; {_RESTORE}")
        have = os.path.getsize(path)
        if have < size:
            raise _damaged(path, f"holds {have} bytes, {index} records {size} (the file is truncated)")


def load_common(root: str, iteration: int | str) -> dict:
    """The shared (non-sharded) part of a distributed checkpoint: the header, the scheduler, ...

    Every reader comes here first: the folder is checked (:func:`check_folder`) before megatron-core reads it.
    """
    from megatron.core import dist_checkpointing

    folder = layout.iteration_dir(root, iteration)
    path = os.path.join(folder, COMMON)
    check_folder(folder)
    try:
        with layout.allowed_globals(), quiet_megatron():  # the args are an argparse.Namespace
            common = dist_checkpointing.load_common_state_dict(folder)
    except Exception as exc:  # noqa: BLE001 - torch.load's many ways to fail on a damaged file
        raise DamagedCheckpointError(
            f"{path} cannot be read ({type(exc).__name__}: {_reason(exc)}): the file is damaged; {_RESTORE}"
        ) from None
    if not isinstance(common, dict):
        raise DamagedCheckpointError(f"{path} holds a {type(common).__name__}, not a checkpoint dict")
    return common


def _failures() -> tuple[type[BaseException], ...]:
    """What a failed torch.distributed.checkpoint read or write raises: any Exception, and torch's
    ``CheckpointException`` (a BaseException subclass gathering every rank's failure)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


def _read_failure(folder: str, exc: BaseException) -> DamagedCheckpointError:
    """megatron-core's load failed on a folder that passed :func:`check_folder` (bytes damaged in place)."""
    from mindspeed_llm.io_errors import os_error_of

    failures = getattr(exc, "failures", None)  # torch's CheckpointException: {rank: (exception, traceback)}
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
    os_error = os_error_of(exc)
    reason = os_error.strerror if os_error is not None and os_error.strerror else _reason(exc)
    return DamagedCheckpointError(
        f"{folder} cannot be read ({type(exc).__name__}: {reason}): a shard file is damaged; {_RESTORE}"
    )


def read_record(root: str, iteration: int | str) -> CheckpointRecord:
    """The record of a distributed checkpoint (``common.pt``; from its ``args`` when it has none)."""
    return _record(load_common(root, iteration), root, iteration)


def _record(common: dict, root: str, iteration: int | str) -> CheckpointRecord:
    where = os.path.join(layout.iteration_dir(root, iteration), COMMON)
    return read_header(common, where, 0 if iteration == layout.RELEASE else int(iteration))


def sharded_metadata(args: argparse.Namespace) -> dict:
    """Megatron-LM core_v0.16.1's content metadata for ``sharded_state_dict`` (``dp_reshardable``
    optimizer)."""
    from megatron.core import parallel_state as ps

    metadata: dict[str, Any] = {}
    if args.use_distributed_optimizer:
        metadata["distrib_optim_sharding_type"] = "dp_reshardable"
    metadata["singleton_local_shards"] = False
    metadata["chained_optim_avoid_prefix"] = True
    metadata["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    return metadata


def _rng_sharded_object(args: argparse.Namespace, rng: dict):
    """This rank's RNG states as Megatron-LM shards them: one object per (pp, tp) rank, DP ranks replicas."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    states = [rng]
    dp_size = ps.get_data_parallel_world_size()
    if getattr(args, "data_parallel_random_init", False) and dp_size > 1:
        states = [None] * dp_size
        torch.distributed.all_gather_object(states, rng, group=ps.get_data_parallel_group())
    return ShardedObject(
        "rng_state",
        states,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


def _state_dict(model: list, optimizer, scheduler, rng, metadata: dict, *, is_loading: bool,
                extra: dict | None = None) -> dict:
    """The sharded state dict of Megatron-LM's ``generate_state_dict`` (model, optimizer, scheduler, RNG)."""
    state: dict[str, Any] = dict(extra or {})
    for i, chunk in enumerate(model):
        state[chunk_key(i, len(model))] = unwrap(chunk).sharded_state_dict(metadata=metadata)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if rng is not None:
        state["rng_state"] = rng
    return state


# ---- save --------------------------------------------------------------------------------------------------
def save(state: TrainState, record: CheckpointRecord, base_args: argparse.Namespace, model: list, optimizer,
         scheduler, args: argparse.Namespace) -> None:
    """Save the run at ``state.iteration`` under ``--save`` in Megatron-LM's torch_dist layout (collective).

    ``state.rng`` is this rank's RNG state (None with ``--no-save-rng``).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.utils import _clean_metadata_for_serialization

    from mindspeed_llm.patches.sync_save import in_process_write_results

    t0 = time.time()
    final = layout.iteration_dir(args.save, state.iteration)
    staging = final + ".tmp"
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
        os.makedirs(staging)
    torch.distributed.barrier()

    metadata = sharded_metadata(args)
    rng = None if state.rng is None else _rng_sharded_object(args, state.rng)
    sharded = _state_dict(model, None if args.no_save_optim else optimizer, scheduler, rng, metadata,
                          is_loading=False, extra=file_header(record, base_args))
    try:
        with quiet_megatron(), quiet_writer_failure(), in_process_write_results():
            dist_checkpointing.save(sharded, staging, get_default_save_sharded_strategy(FORMAT),
                                    content_metadata=_clean_metadata_for_serialization(metadata))
    except BaseException as exc:
        if rank0:  # nothing half-written stays behind; the tracker still names the previous checkpoint
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, _failures()):
            raise _save_failure(staging, exc, args) from None
        raise
    torch.distributed.barrier()
    if rank0:
        publish_save(args.save, state.iteration, staging)
        logger.info(
            "  successfully saved checkpoint from iteration %7d to %s [ torch_dist, t %d, p %d ] (%.1f s)",
            state.iteration,
            args.save,
            record.layout.tp,
            record.layout.pp,
            time.time() - t0,
        )
    torch.distributed.barrier()


def _save_failure(staging: str, exc: BaseException, args: argparse.Namespace):
    """One line for a failed torch_dist save (a full disk, a read-only folder), as the legacy format's."""
    from mindspeed_llm.io_errors import describe_os_error, interrupt_of, os_error_of
    from mindspeed_llm.runtime.checkpoint.locate import last_complete_checkpoint
    from mindspeed_llm.runtime.errors import SaveError

    failures = getattr(exc, "failures", None)  # torch's CheckpointException: {rank: (exception, traceback)}
    inner = exc
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        inner = first[0] if isinstance(first, tuple) else first
    interrupt = interrupt_of(inner)
    if interrupt is not None:
        return interrupt
    os_error = os_error_of(inner)
    if os_error is not None:
        why = describe_os_error(os_error)
    else:  # torch's zip writer dropped the errno ("unexpected pos ..."): what can be told of the disk
        from mindspeed_llm.runtime.checkpoint.torch_format import _write_failure

        why = _write_failure(staging, inner)
    return SaveError(
        f"could not write the torch_dist checkpoint {staging} ({why}); removed it, the last complete "
        f"checkpoint stays: {last_complete_checkpoint(args.save)}. Free space there or give another --save"
    )


def publish_save(save: str, iteration: int, staging: str) -> None:
    """Rename the written ``staging`` folder into place, then let the tracker name ``iteration`` (rank 0).

    Until this runs the new checkpoint exists only under its temporary name: a run killed before it
    keeps the previous one.
    """
    final = layout.iteration_dir(save, iteration)
    if os.path.isdir(final):  # saving an iteration again (e.g. after a resume): replace it whole
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    layout.write_tracker(save, iteration)


# ---- load --------------------------------------------------------------------------------------------------
def _check_optimizer_reshard(
    args: argparse.Namespace, saved: tuple[int, int], content: dict, where: str
) -> None:
    """The distributed optimizer's ``dp_reshardable`` state loads only on the same TP/PP grid."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    mine = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    kind = content.get("distrib_optim_sharding_type")
    if saved != mine and kind not in DistributedOptimizer.checkpoint_fully_reshardable_formats:
        raise CheckpointError(
            f"{where} holds distributed-optimizer state ({kind}) saved at TP={saved[0]} PP={saved[1]}, which "
            f"reshards only over data parallelism: launch with TP={saved[0]} PP={saved[1]}, or add "
            "--no-load-optim to load the weights on this grid with a fresh optimizer"
        )


def load(model: list, optimizer, scheduler, args: argparse.Namespace, iteration: int | str) -> TrainState:
    """Load a torch_dist checkpoint into the model (any TP/PP), optimizer and scheduler; the run's state.

    Same semantics as the legacy loader (``--finetune``/release: weights only, iteration 0; otherwise
    continue after the saved iteration). The RNG state (returned in the state, for the caller to
    restore) loads only on the grid it was saved on, the distributed optimizer's state only on the same
    TP/PP (as in Megatron-LM).
    """
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy

    folder = layout.iteration_dir(args.load, iteration)
    where = f"the checkpoint {args.load} (iteration {iteration}, torch_dist)"
    common = load_common(args.load, iteration)
    record = _record(common, args.load, iteration)
    # What was saved is Megatron-LM's to say: its save flags in the header's args.
    saved_flags = common.get("args") or argparse.Namespace()
    weights_only = iteration == layout.RELEASE or args.finetune
    grid = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    saved_grid = (record.layout.tp or grid[0], record.layout.pp or grid[1])

    load_optim = not weights_only and not args.no_load_optim
    if load_optim and getattr(saved_flags, "no_save_optim", False):
        raise CheckpointError(
            f"{where} was saved with --no-save-optim: add --no-load-optim --no-load-rng to "
            "continue from it with a fresh optimizer, or --finetune to start at iteration 0"
        )
    content = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    if load_optim and args.use_distributed_optimizer:
        if "distrib_optim_sharding_type" not in content:  # written before megatron-core 0.13
            content["distrib_optim_sharding_type"] = (
                "fully_sharded_model_space"
                if getattr(saved_flags, "ckpt_fully_parallel_save", False)
                else "dp_zero_gather_scatter"
            )
        _check_optimizer_reshard(args, saved_grid, content, where)
    load_rng = (not weights_only and not args.no_load_rng and saved_grid == grid
                and not getattr(saved_flags, "no_save_rng", False))
    if not weights_only and not args.no_load_rng and saved_grid != grid and torch.distributed.get_rank() == 0:
        logger.info("%s was saved at TP=%d PP=%d: its RNG state is ignored on this grid", where, *saved_grid)

    metadata = {**content, "dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True)}
    if load_optim and args.use_distributed_optimizer:
        prime_distributed_adam_state(optimizer)
    # fp32 main params of the distributed optimizer are views of the model's leaf parameters: the
    # in-place copies of the load run without autograd.
    with torch.no_grad():
        # The loader replaces this rank's RNG object (the current states stand in) by the saved one.
        rng_object = _rng_sharded_object(args, get_rng_state()) if load_rng else None
        sharded = _state_dict(model, optimizer if load_optim else None, scheduler, rng_object, metadata,
                              is_loading=True)
        try:
            with layout.allowed_globals(), quiet_megatron():
                state = dist_checkpointing.load(sharded, folder, get_default_load_sharded_strategy(folder))
        except CheckpointError:
            raise
        except _failures() as exc:  # a shard damaged in place: torch's reader fails many ways
            raise _read_failure(folder, exc) from None
        check_finite = getattr(args, "check_for_nan_in_loss_and_grad", True)
        for i, chunk in enumerate(model):
            key = chunk_key(i, len(model))
            load_weights(chunk, state[key], folder, key, check_finite)
        if load_optim:
            optimizer.load_state_dict(state["optimizer"])
            if args.use_distributed_optimizer:
                restore_adam_steps(optimizer)
            load_scheduler(scheduler, state["opt_param_scheduler"], folder)
        elif hasattr(optimizer, "reload_model_params"):
            optimizer.reload_model_params()  # main (fp32) params from the loaded weights
    rng = None
    if load_rng and "rng_state" in state:
        saved = state["rng_state"]
        dp_rank = ps.get_data_parallel_rank()
        rng = (saved[dp_rank] if getattr(args, "data_parallel_random_init", False) and len(saved) > dp_rank
               else saved[0])

    run = TrainState() if weights_only else TrainState.from_progress(record.progress, rng=rng)
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        logger.info(
            "  successfully loaded checkpoint from %s [ torch_dist saved at t %d p %d, loaded at t %d p %d ] "
            "at iteration %s",
            args.load,
            *saved_grid,
            *grid,
            iteration,
        )
    return run


# ---- the converter's reader --------------------------------------------------------------------------------
class _OneProcessGroup:
    """A one-rank gloo group for megatron's loader (it asks for ranks), unless one exists already."""

    def __init__(self):
        self.created = False
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
            )
            self.created = True

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.created = False


def read_model_tensors(root: str, iteration: int | str) -> tuple[CheckpointRecord, argparse.Namespace, dict]:
    """The record, the header's ``args`` and ``{key: full tensor}`` of the model part of a distributed
    checkpoint, loaded in this process (the optimizer's tensors are not read)."""
    from megatron.core import dist_checkpointing

    common = load_common(root, iteration)
    record = _record(common, root, iteration)
    folder = layout.iteration_dir(root, iteration)
    group = _OneProcessGroup()
    try:
        with layout.allowed_globals(), quiet_megatron():  # common.pt holds the args (argparse.Namespace)
            metadata = dist_checkpointing.load_tensors_metadata(folder)
            wanted = {k: v for k, v in metadata.items() if not k.startswith(_NOT_MODEL)}
            loaded = dist_checkpointing.load(wanted, folder, validate_access_integrity=False)
    except CheckpointError:
        raise
    except _failures() as exc:  # a shard damaged in place: torch's reader fails many ways
        raise _read_failure(folder, exc) from None
    finally:
        group.close()
    tensors = {k: v for k, v in loaded.items() if torch.is_tensor(v)}
    return record, common.get("args") or argparse.Namespace(), tensors
