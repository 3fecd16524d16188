"""Megatron's checkpoint file layout, shared by both formats, the trainer and the converter.

``latest_checkpointed_iteration.txt`` names the iteration folder (``iter_XXXXXXX`` or ``release``);
the legacy (``torch``) format keeps one ``mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`` per (TP, PP[, EP])
rank in it (Megatron-LM's names: ``_EEE``, the expert-parallel rank, only when EP > 1). Files are written
under a temporary name and renamed; the tracker is written last, so a reader never sees a half-written
iteration. Every rank file is read through :func:`load_rank_file`
(``torch.load(weights_only=True)`` with an allow-list), whose errors name the file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from typing import Any

import torch

from mindspeed_llm.io_errors import interrupt_of, os_error_of
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError
from mindspeed_llm.runtime.checkpoint.record import read_header

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
MODEL_FILENAME = "model_optim_rng.pt"
RELEASE = "release"
# mp_rank_TT, mp_rank_TT_PPP with pipeline stages, mp_rank_TT_EEE / mp_rank_TT_PPP_EEE with expert parallelism
RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?")

# Globals a legacy checkpoint may hold besides tensors and builtins (``torch.load(weights_only=True)``).
_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def register_safe_globals(*objects: Any) -> None:
    """Allow more classes/functions in :func:`safe_torch_load` (e.g. training's own state objects)."""
    for obj in objects:
        if obj not in _SAFE_GLOBALS:
            _SAFE_GLOBALS.append(obj)


def _default_safe_globals() -> list[Any]:
    extra: list[Any] = []
    try:  # RNG states saved by training hold numpy arrays.
        import numpy as np

        extra += [np.ndarray, np.dtype, np.dtypes.UInt32DType]
        try:
            extra.append(np._core.multiarray._reconstruct)
        except AttributeError:  # numpy < 2
            extra.append(np.core.multiarray._reconstruct)
    except ImportError:
        pass
    try:  # Megatron-written args carry this enum.
        from megatron.core.enums import ModelType

        extra.append(ModelType)
    except ImportError:
        pass
    return extra


@contextlib.contextmanager
def allowed_globals():
    """Context manager: ``torch.load(weights_only=True)`` inside accepts the allow-listed checkpoint globals.

    They are registered process-wide, as megatron-core's own ``register_safe_globals`` does: torch's
    ``safe_globals`` context would restore the list on exit and so also drop what code run inside
    registered for good (megatron-core registers its globals when a module is first imported, which
    can happen during a load), breaking later ``torch.load`` calls of megatron's readers.
    """
    torch.serialization.add_safe_globals(_SAFE_GLOBALS + _default_safe_globals())
    yield


def safe_torch_load(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with the allow-listed globals of legacy checkpoints."""
    with allowed_globals():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def rank_dir_name(tp_rank: int, pp_rank: int, pp_size: int, ep_rank: int = 0, ep_size: int = 1) -> str:
    """``mp_rank_TT`` when pp_size is 1, else ``mp_rank_TT_PPP``; ``_EEE`` appended when ep_size > 1."""
    name = f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return name + (f"_{ep_rank:03d}" if ep_size > 1 else "")


def iteration_dir_name(iteration: int | str) -> str:
    """``iter_0000001`` (or ``release``)."""
    if iteration == RELEASE:
        return RELEASE
    return f"iter_{int(iteration):07d}"


def iteration_dir(root: str | os.PathLike, iteration: int | str) -> str:
    """``root/iter_XXXXXXX`` (or ``root/release``)."""
    return os.path.join(os.fspath(root), iteration_dir_name(iteration))


def checkpoint_dir_for(root: str | os.PathLike, iteration: int | str, tp_rank: int, pp_rank: int,
                       pp_size: int, ep_rank: int = 0, ep_size: int = 1) -> str:
    """Folder of one rank's ``model_optim_rng.pt``."""
    return os.path.join(os.fspath(root), iteration_dir_name(iteration),
                        rank_dir_name(tp_rank, pp_rank, pp_size, ep_rank, ep_size))


def checkpoint_file_for(root: str | os.PathLike, iteration: int | str, tp_rank: int, pp_rank: int,
                        pp_size: int, ep_rank: int = 0, ep_size: int = 1) -> str:
    """Path of one rank's ``model_optim_rng.pt``."""
    return os.path.join(checkpoint_dir_for(root, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size),
                        MODEL_FILENAME)


def read_tracker(root: str | os.PathLike) -> int | str:
    """The iteration named by ``latest_checkpointed_iteration.txt`` (an int, or ``"release"``)."""
    path = os.path.join(os.fspath(root), TRACKER_FILENAME)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path} not found: {root} is not a Megatron checkpoint folder (expected the folder that holds "
            f"{TRACKER_FILENAME} and iter_XXXXXXX/)"
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(64)
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DamagedCheckpointError(
            f"{path} holds binary data, expected an iteration number or 'release': the file is damaged; "
            "write the iteration of the newest complete iter_XXXXXXX/ folder into it"
        ) from None
    except OSError as exc:
        raise DamagedCheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    if text == RELEASE:
        return RELEASE
    if re.fullmatch(r"\d{1,12}", text):
        return int(text)
    raise DamagedCheckpointError(
        f"{path} holds {text[:40]!r}, expected an iteration number or 'release': write the iteration of the "
        "newest complete iter_XXXXXXX/ folder into it"
    )


def write_tracker(root: str | os.PathLike, iteration: int | str) -> None:
    """Write the tracker file atomically (call it after every rank's file is in place)."""
    path = os.path.join(os.fspath(root), TRACKER_FILENAME)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(iteration))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_rank_state(root: str | os.PathLike, iteration: int | str, tp_rank: int, pp_rank: int, pp_size: int,
                    state: dict, *, crc32: bool = True, ep_rank: int = 0, ep_size: int = 1) -> str:
    """Write one rank's state (``args``, ``checkpoint_version``, ``iteration``, ``model``, ...) atomically.

    ``crc32=False`` skips the zip records' CRC-32 (about 4x faster writes; ``torch.load`` does not need it).
    """
    folder = checkpoint_dir_for(root, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MODEL_FILENAME)
    tmp = path + ".tmp"
    try:
        from torch.utils.serialization import config as serialization_config
    except ImportError:  # torch < 2.6: always computed
        serialization_config = None
    previous = serialization_config.save.compute_crc32 if serialization_config else True
    if serialization_config:
        serialization_config.save.compute_crc32 = crc32
    try:
        # Through a Python file object, so a failed write (disk full) surfaces as the OSError behind
        # torch's "[enforce fail at inline_container.cc]" RuntimeError.
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, RuntimeError):  # torch wraps what its Python write callback raised
            inner = interrupt_of(exc) or os_error_of(exc)
            if inner is not None:
                raise inner from None
        raise
    finally:
        if serialization_config:
            serialization_config.save.compute_crc32 = previous
    return path


def list_rank_dirs(root: str | os.PathLike, iteration: int | str) -> dict[tuple[int, int], str]:
    """``{(tp_rank, pp_rank): file}`` for every rank file present in an iteration folder (EP rank 0's files
    when the experts are split over EP ranks: :func:`list_rank_files` has them all)."""
    return {(t, p): path for (t, p, e), path in list_rank_files(root, iteration).items() if e == 0}


def list_rank_files(root: str | os.PathLike, iteration: int | str) -> dict[tuple[int, int, int], str]:
    """``{(tp_rank, pp_rank, ep_rank): file}`` for every rank file present in an iteration folder.

    ``mp_rank_TT_NNN`` is a pipeline rank, or the expert-parallel rank when the checkpoint's record says
    EP > 1 at PP 1 (Megatron-LM's names are ambiguous there).
    """
    it_dir = os.path.join(os.fspath(root), iteration_dir_name(iteration))
    if not os.path.isdir(it_dir):
        raise CheckpointError(
            f"{it_dir} not found, but {TRACKER_FILENAME} names it: the checkpoint is incomplete"
        )
    parsed = {}
    for name in sorted(os.listdir(it_dir)):
        m = RANK_DIR.fullmatch(name)
        if not m:
            continue
        path = os.path.join(it_dir, name, MODEL_FILENAME)
        if os.path.isfile(path):
            parsed[tuple(int(g) if g is not None else None for g in m.groups())] = path
    if not parsed:
        return {}
    if any(g[2] is not None for g in parsed):  # mp_rank_TT_PPP_EEE
        return {(t, p or 0, e or 0): path for (t, p, e), path in parsed.items()}
    second_is_ep = False
    if any(g[1] is not None for g in parsed):
        first = parsed[min(parsed, key=lambda g: (g[0], g[1] or 0))]
        try:
            recorded = read_header(load_rank_file(first, mmap=True), first).layout
        except CheckpointError:  # a damaged file: its reader names it
            recorded = None
        second_is_ep = recorded is not None and (recorded.ep or 1) > 1 and (recorded.pp or 1) == 1
    if second_is_ep:
        return {(t, 0, n or 0): path for (t, n, _), path in parsed.items()}
    return {(t, n or 0, 0): path for (t, n, _), path in parsed.items()}


def parallel_sizes(root: str | os.PathLike, iteration: int | str) -> tuple[int, int]:
    """(TP, PP) of a checkpoint, checking that every rank file of that grid is present."""
    found = list_rank_dirs(root, iteration)
    if not found:
        raise CheckpointError(
            f"no mp_rank_*/{MODEL_FILENAME} under "
            f"{os.path.join(os.fspath(root), iteration_dir_name(iteration))}"
        )
    first = found[min(found)]
    recorded = read_header(load_rank_file(first, mmap=True), first).layout
    tp = recorded.tp or (max(t for t, _ in found) + 1)
    pp = recorded.pp or (max(p for _, p in found) + 1)
    if not (isinstance(tp, int) and isinstance(pp, int) and 0 < tp <= 4096 and 0 < pp <= 4096):
        raise DamagedCheckpointError(
            f"{first}: its header records tensor_model_parallel_size={tp!r}, pipeline_model_parallel_size="
            f"{pp!r}: the file is damaged or not a Megatron checkpoint"
        )
    ep = recorded.ep or 1
    every = list_rank_files(root, iteration) if ep > 1 else {(t, p, 0): f for (t, p), f in found.items()}
    missing = [(t, p, e) for t in range(tp) for p in range(pp) for e in range(ep) if (t, p, e) not in every]
    if missing:
        names = ", ".join(rank_dir_name(t, p, pp, e, ep) for t, p, e in missing)
        raise CheckpointError(
            f"{root}: checkpoint with TP={tp} PP={pp} is missing rank folders {names} under "
            f"{iteration_dir_name(iteration)}/; copy them from the training run"
        )
    return tp, pp


def load_rank_state(root: str | os.PathLike, iteration: int | str | None, tp_rank: int, pp_rank: int,
                    pp_size: int, *, mmap: bool = True, ep_rank: int = 0, ep_size: int = 1) -> dict:
    """Load one rank's ``model_optim_rng.pt`` (iteration None = the tracker's)."""
    if iteration is None:
        iteration = read_tracker(root)
    path = checkpoint_file_for(root, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size)
    if not os.path.isfile(path):
        ep_part = f", EP rank {ep_rank}" if ep_size > 1 else ""
        raise CheckpointError(
            f"{path} not found: the checkpoint has no file for TP rank {tp_rank}, PP rank {pp_rank}{ep_part}"
        )
    return load_rank_file(path, mmap=mmap)


def load_rank_file(path: str, *, mmap: bool = True) -> dict:
    """``safe_torch_load`` of one ``model_optim_rng.pt``; a damaged or foreign file is one line naming it.

    ``mmap`` maps the tensors instead of reading them (a legacy non-zip torch file is read whole).
    """
    fix = f"restore the file, or write an earlier iteration into {TRACKER_FILENAME} to load that one"
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DamagedCheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    if size == 0:
        raise DamagedCheckpointError(f"{path} is empty (0 bytes): a copy or save that did not finish; {fix}")
    try:
        try:
            state = safe_torch_load(path, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "mmap can only be used" in str(exc)):
                raise
            state = safe_torch_load(path)  # a legacy (non-zip) torch file: readable without mmap
    except pickle.UnpicklingError as exc:
        text = str(exc).strip()
        if "Unsupported global" not in text:  # not a class outside the allow-list: bytes that are no pickle
            raise DamagedCheckpointError(
                f"{path} cannot be read (unreadable pickle): the file is damaged or not a "
                f"torch checkpoint; {fix}"
            ) from None
        raise CheckpointError(
            f"{path} holds objects that are not on the safe-load allow-list ({text.splitlines()[0]}). If you "
            "trust the file, allow the class with "
            "mindspeed_llm.runtime.checkpoint.layout.register_safe_globals(...) before loading"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, ImportError, IndexError,
            TypeError) as exc:  # junk bytes make the unpickler fail in any of these ways
        # torch's zip reader: "failed finding central directory", "Ran out of input", ... for a cut file.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise DamagedCheckpointError(f"{path} cannot be read ({reason}): the file is damaged or not a torch "
                                     f"checkpoint; {fix}") from None
    if not isinstance(state, dict):
        raise DamagedCheckpointError(
            f"{path} holds a {type(state).__name__}, not a Megatron checkpoint dict ('args', 'model', ...)"
        )
    return state
