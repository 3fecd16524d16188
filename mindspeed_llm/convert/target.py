"""The output folder of a conversion: what it may replace, and writing it without ever losing a folder.

Rules (docs/checkpoint.md, "What happens when"):

* ``--save-dir`` may not be, lie inside, or contain ``--load-dir`` (symlinks and relative paths
  resolved), whatever ``--overwrite`` says. The HF folder mg->hf reads config and tokenizer from
  (``--hf-dir``) may not be replaced either; only its ``mg2hf/`` subfolder (MindSpeed's form) is written.
* ``--overwrite`` replaces only an earlier output of the same kind: an HF export written by this tool
  (it carries :data:`EXPORT_MARKER`, or is the ``mg2hf/`` folder of an HF folder) for mg->hf, a Megatron
  checkpoint without training state for hf->mg and mg->mg. A training checkpoint (optimizer, scheduler
  or RNG state, several iterations) needs ``--overwrite-training-checkpoint``; an HF model this tool did not
  write needs ``--overwrite-hf-model``. Anything else is refused.
* Output is staged in a hidden folder beside the target and swapped in at the end, with SIGINT/SIGTERM
  held back during the two renames; any failure removes the staging folder and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator

from mindspeed_llm.convert.errors import (
    CheckpointError,
    DamagedCheckpointError,
    OutputWriteError,
    describe_os_error,
    os_error_of,
)
from mindspeed_llm.signals import process_alive, signals_deferred

EXPORT_MARKER = ".mindspeed_llm_export.json"
MG2HF = "mg2hf"
_MG_NAMES = re.compile(r"iter_\d{7}|release")

# A target that exists but cannot take files now (exit 1), as opposed to a path that cannot be a folder.
_CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)

# Folder kinds (:func:`folder_kind`).
MISSING, EMPTY, HF_EXPORT, HF_MODEL, MG_CONVERTED, MG_TRAINING, OTHER = (
    "missing", "empty", "hf-export", "hf-model", "mg-converted", "mg-training", "other")


def real(path: str) -> str:
    """Absolute path with symlinks resolved (also for parts that do not exist yet)."""
    return os.path.realpath(os.path.abspath(path))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_disjoint(target: str, load_dir: str, *, config_dir: str | None = None) -> None:
    """Refuse a target equal to, inside or containing the folder read (and never the HF config folder)."""
    t, src = real(target), real(load_dir)
    if _inside(t, src) or _inside(src, t):
        how = "is" if t == src else ("is inside" if _inside(t, src) else "contains")
        raise CheckpointError(
            f"--save-dir {target} {how} --load-dir {load_dir}: writing there would delete the source; "
            "choose a --save-dir outside it (--overwrite does not change this)"
        )
    if config_dir:
        c = real(config_dir)
        if _inside(c, t):  # a target inside the HF folder (its mg2hf/) replaces nothing of it
            raise CheckpointError(
                f"--save-dir {target} {'is' if c == t else 'contains'} the HF folder {config_dir} that "
                "config and tokenizer are read from: choose another --save-dir (--overwrite does not change "
                "this)"
            )


def is_hf_folder(path: str) -> bool:
    """config.json plus safetensors weights (or their index)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "config.json" in names and any(n.endswith(".safetensors") or n == "model.safetensors.index.json"
                                          for n in names)


def is_hf_export(path: str) -> bool:
    """An HF folder this tool wrote: it carries the marker, or it is the ``mg2hf/`` of an HF folder."""
    if not is_hf_folder(path):
        return False
    if os.path.isfile(os.path.join(path, EXPORT_MARKER)):
        return True
    return os.path.basename(os.path.normpath(path)) == MG2HF and is_hf_folder(
        os.path.dirname(os.path.abspath(path))
    )


def _rank_files(path: str) -> Iterator[tuple[str, list[str]]]:
    for it in sorted(os.listdir(path)):
        it_dir = os.path.join(path, it)
        if not (_MG_NAMES.fullmatch(it) and os.path.isdir(it_dir)):
            continue
        for rank in sorted(os.listdir(it_dir)):
            rank_dir = os.path.join(it_dir, rank)
            if rank.startswith("mp_rank_") and os.path.isdir(rank_dir):
                yield rank_dir, os.listdir(rank_dir)


def _holds_optimizer_state(path: str) -> bool:
    """True when any rank file of any iteration holds training state (optimizer, scheduler, RNG) or cannot be
    read.

    The converter writes only ``args``, ``checkpoint_version``, ``iteration`` and ``model``; a training run
    saved with ``--no-save-optim`` still carries ``rng_state``, and its trained weights are worth keeping.
    """
    from mindspeed_llm.runtime.checkpoint.layout import MODEL_FILENAME, load_rank_file

    iterations = {os.path.basename(os.path.dirname(d)) for d, _ in _rank_files(path)}
    if len(iterations) > 1:
        return True  # a converter writes one iteration; several are a training run's history
    for rank_dir, names in _rank_files(path):
        if any(n != MODEL_FILENAME for n in names if not n.endswith(".tmp")):
            return True  # distrib_optim.pt and other training files
        if MODEL_FILENAME in names:
            try:
                state = load_rank_file(os.path.join(rank_dir, MODEL_FILENAME))
            except DamagedCheckpointError:
                return True  # cannot tell: treat as something to keep
            if any(k in state for k in ("optimizer", "opt_param_scheduler", "rng_state")):
                return True
    return False


def folder_kind(path: str) -> str:
    """What a folder holds: one of the kinds above."""
    if not os.path.exists(path):
        return MISSING
    names = os.listdir(path)
    if not names:
        return EMPTY
    if is_hf_folder(path):
        return HF_EXPORT if is_hf_export(path) else HF_MODEL
    if EXPORT_MARKER in names and "adapter_config.json" in names:  # --save-lora-to-hf's own peft export
        return HF_EXPORT
    if "latest_checkpointed_iteration.txt" in names or any(_MG_NAMES.fullmatch(n) for n in names):
        return MG_TRAINING if _holds_optimizer_state(path) else MG_CONVERTED
    return OTHER


def check_replace(target: str, output: str, *, overwrite: bool, overwrite_training_checkpoint: bool = False,
                  overwrite_hf_model: bool = False) -> None:
    """Refuse to write ``output`` ("hf" or "mg") over a folder that is not an earlier output of that kind."""
    if os.path.exists(target) and not os.path.isdir(target):
        raise CheckpointError(f"--save-dir {target} is a file: give a folder path")
    try:
        kind = folder_kind(target)
    except PermissionError as exc:
        raise CheckpointError(
            f"--save-dir {target} cannot be read ({exc.strerror}): choose another folder"
        ) from None
    if kind in (MISSING, EMPTY):
        return
    if kind == MG_TRAINING:
        if overwrite_training_checkpoint:
            return
        raise CheckpointError(
            f"--save-dir {target} holds a training checkpoint (optimizer state or several iterations), which "
            "--overwrite does not replace: choose another folder, or pass --overwrite-training-checkpoint to "
            "delete it"
        )
    if kind == HF_MODEL:
        if overwrite_hf_model:
            return
        raise CheckpointError(
            f"--save-dir {target} holds an HF model that convert_ckpt.py did not write, which --overwrite "
            "does not replace: choose another folder, or pass --overwrite-hf-model to delete it"
        )
    same_kind = (kind == HF_EXPORT) if output == "hf" else (kind == MG_CONVERTED)
    if not same_kind:
        what = {HF_EXPORT: "an HF export", MG_CONVERTED: "a Megatron checkpoint", OTHER: "files"}[kind]
        raise CheckpointError(
            f"--save-dir {target} holds {what}, not an earlier "
            f"{'HF export' if output == 'hf' else 'Megatron'} output of this conversion: choose an empty or "
            "new folder (--overwrite replaces only an earlier output of the same kind)"
        )
    if not (overwrite or overwrite_training_checkpoint or overwrite_hf_model):
        raise CheckpointError(
            f"--save-dir {target} already holds files (another checkpoint?): choose an empty or new folder, "
            "or pass --overwrite to replace it"
        )


def remove_stale_staging(target: str) -> None:
    """Remove staging folders of earlier runs on ``target`` that were killed (kill -9, power loss)."""
    parent, base = os.path.split(target)
    pattern = re.compile(rf"\.{re.escape(base)}\.(?:tmp|old)-(\d+)")
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = pattern.fullmatch(name)
            if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def write_failed(target: str, exc: BaseException) -> OutputWriteError:
    """The one-line error for a failed write under ``target``."""
    os_err = os_error_of(exc)
    reason = describe_os_error(os_err) if os_err else str(exc).strip().splitlines()[0]
    return OutputWriteError(f"--save-dir {target}: writing failed ({reason}); nothing was replaced")


@contextlib.contextmanager
def staging_dir(target: str) -> Iterator[str]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on any error it is
    removed.

    Call :func:`check_replace` first. Write errors (disk full, read-only) become :class:`OutputWriteError`.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_staging(target)
        tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    except OSError as exc:
        error = OutputWriteError if exc.errno in _CANNOT_WRITE else CheckpointError  # exit 1 vs a bad path, 2
        raise error(f"--save-dir {target} is not writable ({describe_os_error(exc)})") from None
    committed = False
    try:
        yield tmp
        with signals_deferred():
            old = None
            if os.path.isdir(target):
                old = os.path.join(parent, f".{os.path.basename(target)}.old-{os.getpid()}")
                os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                if old:
                    os.replace(old, target)
                raise
            if old:
                shutil.rmtree(old, ignore_errors=True)
            committed = True
    except (CheckpointError, OutputWriteError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:  # reads raise CheckpointError, so an OSError here is a write that failed
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(target, exc) from None
    except BaseException as exc:
        if committed:  # a signal held back during the swap arrives now: the new output is complete
            exc.committed_output = target
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def mark_hf_export(folder: str, info: dict) -> None:
    """Write the marker that makes an HF folder replaceable by a later mg->hf with --overwrite."""
    with open(os.path.join(folder, EXPORT_MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": "convert_ckpt.py", **info}, f, indent=2)
