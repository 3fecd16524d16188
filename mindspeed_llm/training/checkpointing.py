"""Save and load training checkpoints in Megatron's legacy layout (``--ckpt-format torch``).

``--ckpt-format torch_dist`` saves through :mod:`mindspeed_llm.training.checkpointing_dist` instead;
loading picks the reader from what the iteration folder holds, whatever ``--ckpt-format`` says
(as Megatron-LM does), so either format resumes and a Megatron-LM checkpoint loads.

One ``model_optim_rng.pt`` per (TP, PP) rank, written by data-parallel rank 0, holding ``args``,
``checkpoint_version`` (3.0), ``iteration``, ``model`` (``model0..N`` with virtual pipeline stages),
``optimizer``, ``opt_param_scheduler``, ``rng_state`` (one entry per DP rank) and the FLOP count.
With ``--use-distributed-optimizer`` the sharded parameter state is gathered to DP rank 0 and saved
beside it as ``distrib_optim.pt``, as Megatron-LM does. Every file is written under a temporary name
and renamed; the tracker ``latest_checkpointed_iteration.txt`` is rewritten last, after a barrier,
so a run killed during a save leaves the previous checkpoint as the one that loads.

The run's state (:class:`~mindspeed_llm.training.state.TrainState`: iteration, consumed samples,
FLOPs, RNG states) is saved where Megatron-LM keeps it: the consumed samples inside ``args``
(``consumed_train_samples``, ``consumed_valid_samples``), so a resumed run reads the data from where
the saved one stopped.

Test-only hook: ``MINDSPEED_LLM_TEST_PAUSE_IN_SAVE=N`` makes the save of iteration N print
``MINDSPEED_LLM_TEST: paused in checkpoint save at iteration N`` once the new files are written under
their temporary names, and then sleep until the process is killed. The SIGKILL test uses it to land
its kill inside a save every time; it has no other use.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import signal
import sys
import time
from typing import Any

import torch

from mindspeed_llm.checkpoint import layout
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.config.namespace import public_items
from mindspeed_llm.models.families import ROPE_SCALING_FLAGS, rope_scaling_to_flags
from mindspeed_llm.runtime.errors import NonFiniteError, SaveError, fail_together
from mindspeed_llm.training import checkpointing_dist
from mindspeed_llm.training.state import TrainState, get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

DISTRIB_OPTIM_FILENAME = "distrib_optim.pt"
PAUSE_IN_SAVE_ENV = "MINDSPEED_LLM_TEST_PAUSE_IN_SAVE"

# Args that define the model and must match a checkpoint being loaded (flag = "--" + name with dashes).
_MODEL_ARGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "add_qkv_bias", "qk_layernorm", "untie_embeddings_and_output_weights", "position_embedding_type",
    "rotary_base", "rotary_percent", "normalization", "norm_epsilon", "swiglu",
)
_ROPE_ARGS = tuple(attr for attr, _ in ROPE_SCALING_FLAGS)

_SAVED_TYPES = (bool, int, float, str, type(None), torch.dtype)


def _plain(value: Any) -> bool:
    if isinstance(value, _SAVED_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def args_to_save(args: argparse.Namespace) -> argparse.Namespace:
    """The plain-data part of ``args`` (what ``torch.load(weights_only=True)`` can read back)."""
    return argparse.Namespace(**{k: v for k, v in public_items(args).items() if _plain(v)})


def same_folder(a: str | None, b: str | None) -> bool:
    """True when two paths name the same folder (existing or not)."""
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


# ---- before the model exists: what is there to load, and does it fit? ----------------------------------------
def find_checkpoint(args: argparse.Namespace) -> int | str | None:
    """The tracker's iteration under ``--load``; None for a fresh start (only when --load == --save)."""
    load = args.load
    if not load:
        return None
    if getattr(args, "ckpt_step", None) is not None:
        return _checkpoint_step(load, args.ckpt_step)
    tracker = os.path.join(load, layout.TRACKER_FILENAME)
    if os.path.isfile(tracker):
        return layout.read_tracker(load)
    if same_folder(load, args.save) and not getattr(args, "exit_on_missing_checkpoint", False):
        return None
    if not os.path.isdir(load):
        raise CheckpointError(
            f"--load {load}: the folder does not exist. Expected a Megatron checkpoint folder holding "
            f"{layout.TRACKER_FILENAME} and iter_XXXXXXX/ (convert_ckpt.py --save-dir, or a training --save); "
            "to start from random weights drop --load, or pass the same folder as --save to auto-resume"
        )
    present = ", ".join(sorted(os.listdir(load))[:8]) or "nothing"
    raise CheckpointError(
        f"--load {load}: no checkpoint there ({layout.TRACKER_FILENAME} missing; the folder holds {present}). "
        "Expected the folder that convert_ckpt.py --save-dir or a training --save wrote"
    )


def find_lora_checkpoint(args: argparse.Namespace) -> int | str | None:
    """--lora-load's tracker iteration; None for a fresh adapter (only when --lora-load == --save, no tracker yet)."""
    lora_load = getattr(args, "lora_load", None)
    if not lora_load:
        return None
    if os.path.isfile(os.path.join(lora_load, layout.TRACKER_FILENAME)):
        return layout.read_tracker(lora_load)
    if same_folder(lora_load, args.save):
        return None
    raise CheckpointError(f"--lora-load {lora_load}: no {layout.TRACKER_FILENAME} there: give the --save folder of "
                          "a LoRA run (or the same folder as --save to start a new adapter and resume it later)")


def _checkpoint_step(load: str, step: int) -> int:
    """--ckpt-step: that iteration's folder instead of the tracker's (as Megatron-LM)."""
    folder = os.path.join(load, layout.iteration_dir_name(step))
    if not os.path.isdir(folder):
        have = sorted(d for d in os.listdir(load) if d.startswith("iter_")) if os.path.isdir(load) else []
        raise CheckpointError(f"--ckpt-step {step}: {folder} does not exist (there: {', '.join(have) or 'nothing'}); "
                              "pass one of those iterations or drop --ckpt-step")
    return step


def checkpoint_model_settings(ckpt_args: argparse.Namespace) -> dict:
    """The model-defining settings a checkpoint records (flag attribute -> value).

    Its ``args`` first; the RoPE and norm settings of older conversions, which only recorded the HF
    config, come from that config.
    """
    found = {attr: getattr(ckpt_args, attr) for attr in (*_MODEL_ARGS, *_ROPE_ARGS) if hasattr(ckpt_args, attr)}
    if "add_bias_linear" in vars(ckpt_args):
        found["add_bias_linear"] = ckpt_args.add_bias_linear
    hf_config = getattr(ckpt_args, "hf_config", None)
    if hf_config and not hasattr(ckpt_args, "rope_scaling_type"):
        from mindspeed_llm.models.families import ModelConfig

        try:
            cfg = ModelConfig.from_hf_config(dict(hf_config))
        except Exception:  # noqa: BLE001 - an unreadable HF config just records less
            return found
        found.update(rope_scaling_to_flags(cfg.rope_scaling))
        found.setdefault("rotary_base", cfg.rotary_base)
        found.setdefault("norm_epsilon", cfg.norm_epsilon)
    return found


def _launch_setting(args: argparse.Namespace, attr: str):
    """The value this launch uses for a model setting."""
    if attr == "add_bias_linear":
        return not args.disable_bias_linear
    return getattr(args, attr, None)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _rope_contradictions(args: argparse.Namespace, recorded: dict) -> list[str]:
    """RoPE scaling flags given at launch that differ from the recorded scaling.

    Without ``--rope-scaling-type`` the checkpoint's scaling is used as it is (see
    ``arguments.rope_scaling_from_args``); flags left unset are completed from it.
    """
    kind = getattr(args, "rope_scaling_type", None)
    if kind is None or not any(attr in recorded for attr in _ROPE_ARGS):
        return []
    theirs = recorded.get("rope_scaling_type")
    if kind != theirs:
        return [f"--rope-scaling-type {kind} (checkpoint: {theirs})"]
    return [f"--{attr.replace('_', '-')} {getattr(args, attr)} (checkpoint: {recorded.get(attr)})"
            for attr in _ROPE_ARGS[1:] if getattr(args, attr) is not None and not _same(getattr(args, attr),
                                                                                        recorded.get(attr))]


def check_model_settings(args: argparse.Namespace, ckpt_args: argparse.Namespace, where: str) -> None:
    """Refuse a launch whose model flags contradict what the checkpoint records (one line, every contradiction).

    A flag left at its default counts as its default (a forgotten ``--rotary-base 1000000`` is refused).
    """
    recorded = checkpoint_model_settings(ckpt_args)
    wrong = []
    for attr, theirs in recorded.items():
        if attr in _ROPE_ARGS:
            continue
        mine = _launch_setting(args, attr)
        if not _same(mine, theirs):
            flag = "--disable-bias-linear" if attr == "add_bias_linear" else "--" + attr.replace("_", "-")
            if attr == "add_bias_linear":
                mine, theirs = not mine, not theirs
            wrong.append(f"{flag} {mine} (checkpoint: {theirs})")
    wrong += _rope_contradictions(args, recorded)
    if wrong:
        raise CheckpointError(f"{where} was trained with other model settings than this launch: {'; '.join(wrong)}. "
                              "Pass the checkpoint's values, or --use-checkpoint-args to take them from it")


def load_args_from_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """--use-checkpoint-args: the model settings to take from the ``--load`` checkpoint (Megatron-LM's rules).

    Returns ``{name: value}``; ``config.validate.take_checkpoint_values`` sets them on the parsed flags before
    validation. Which settings, and whether the checkpoint's value replaces one the launch gave ("force") or
    only fills one it left unset ("fill"), is the settings' metadata in ``config/groups.py``. A missing
    checkpoint takes nothing.
    """
    from mindspeed_llm.config.groups import checkpoint_settings

    if not args.load:
        raise CheckpointError("--use-checkpoint-args needs --load CHECKPOINT_DIR")
    if args.ckpt_step is not None:
        iteration = _checkpoint_step(args.load, args.ckpt_step)
    elif os.path.isfile(os.path.join(args.load, layout.TRACKER_FILENAME)):
        iteration = layout.read_tracker(args.load)
    else:
        logger.info("--use-checkpoint-args: no checkpoint in %s, using the launch's arguments", args.load)
        return {}
    files = layout.list_rank_dirs(args.load, iteration)
    if not files:
        raise CheckpointError(f"--load {args.load}: no mp_rank_*/{layout.MODEL_FILENAME} under "
                              f"{layout.iteration_dir_name(iteration)}")
    ckpt_args = load_rank_file(files[min(files)], mmap=True).get("args")
    if ckpt_args is None:
        logger.info("--use-checkpoint-args: %s records no args, using the launch's arguments", args.load)
        return {}
    values = dict(vars(ckpt_args))
    values.update({k: v for k, v in checkpoint_model_settings(ckpt_args).items() if k not in values})
    if "add_bias_linear" in values:
        values["disable_bias_linear"] = not values["add_bias_linear"]
    fill = checkpoint_settings("fill")
    taken = {}
    for name in (*fill, *checkpoint_settings("force")):
        if values.get(name) is None or (name in fill and getattr(args, name, None) is not None):
            continue
        taken[name] = values[name]
    if taken:
        logger.info("--use-checkpoint-args: from %s: %s", args.load, ", ".join(f"{n}={v}" for n, v in taken.items()))
    return taken


def check_checkpoint_args(args: argparse.Namespace, ckpt_args: argparse.Namespace, where: str, *,
                          reshardable: bool = False) -> None:
    """Raise if the launch's model shape (or, unless ``reshardable``, its TP/PP sizes) differ from the checkpoint's."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    c_tp = getattr(ckpt_args, "tensor_model_parallel_size", tp)
    c_pp = getattr(ckpt_args, "pipeline_model_parallel_size", pp)
    if (c_tp, c_pp) != (tp, pp) and not reshardable:
        raise CheckpointError(
            f"{where} was saved with TP={c_tp} PP={c_pp} but this launch has --tensor-model-parallel-size {tp} "
            f"--pipeline-model-parallel-size {pp}: launch with TP={c_tp} PP={c_pp}, or reshard it with "
            f"convert_ckpt.py --load-model-type mg --save-model-type mg --target-tensor-parallel-size {tp} "
            f"--target-pipeline-parallel-size {pp}"
        )
    c_list = getattr(ckpt_args, "num_layer_list", None)
    if c_list and pp > 1 and not reshardable and str(c_list).replace(" ", "") != str(args.num_layer_list or "").replace(" ", ""):
        raise CheckpointError(f"{where} has --num-layer-list {c_list}: pass the same --num-layer-list")
    check_model_settings(args, ckpt_args, where)


def adopt_padded_vocab(args: argparse.Namespace, ckpt_args: argparse.Namespace, tokenizer_vocab: int,
                       where: str) -> int | None:
    """The checkpoint's padded vocabulary size for the run (None: not recorded), or name the flag to pass."""
    padded = getattr(ckpt_args, "padded_vocab_size", None)
    if padded is None:
        return None
    if args.padded_vocab_size is not None and args.padded_vocab_size != padded:
        raise CheckpointError(f"{where} has a padded vocabulary of {padded} rows but --padded-vocab-size is "
                              f"{args.padded_vocab_size}: pass --padded-vocab-size {padded} (or drop the flag)")
    if tokenizer_vocab > padded:
        raise CheckpointError(f"the tokenizer has {tokenizer_vocab} tokens but {where}'s embedding has only "
                              f"{padded} rows: use the tokenizer the checkpoint was converted with")
    return padded


def is_dist_checkpoint(args: argparse.Namespace, iteration: int | str) -> bool:
    """True when ``--load``'s iteration folder is a torch_dist (megatron-core distributed) checkpoint."""
    return checkpointing_dist.is_dist_checkpoint(args.load, iteration)


def read_checkpoint_args(args: argparse.Namespace, iteration: int | str) -> tuple[argparse.Namespace, str]:
    """``args`` stored in this rank's checkpoint file, and a name for it in messages."""
    from megatron.core import parallel_state as ps

    if is_dist_checkpoint(args, iteration):
        common = checkpointing_dist.load_common(args.load, iteration)
        return (common.get("args") or argparse.Namespace(),
                f"the checkpoint {args.load} (iteration {iteration}, torch_dist)")
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    path = layout.checkpoint_file_for(args.load, iteration, tp_rank, pp_rank, args.pipeline_model_parallel_size)
    if not os.path.isfile(path):
        try:
            c_tp, c_pp = layout.parallel_sizes(args.load, iteration)
        except CheckpointError:
            c_tp = c_pp = None
        if c_tp is not None:
            check_checkpoint_args(args, argparse.Namespace(tensor_model_parallel_size=c_tp,
                                                            pipeline_model_parallel_size=c_pp),
                                  f"the checkpoint in {args.load}")
        raise CheckpointError(f"{path} not found: the checkpoint in {args.load} is incomplete for TP rank "
                              f"{tp_rank}, PP rank {pp_rank}")
    state = load_rank_file(path, mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a Megatron checkpoint dict")
    return state.get("args") or argparse.Namespace(), f"the checkpoint {args.load} (iteration {iteration})"


def load_rank_file(path: str, *, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` of a rank file; an unknown pickled class becomes a clear error."""
    import pickle

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a copy or save that did not finish; restore the "
                              f"file, or write an earlier iteration into {layout.TRACKER_FILENAME} to load that one")
    try:
        try:
            return layout.safe_torch_load(path, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "mmap can only be used" in str(exc)):
                raise
            return layout.safe_torch_load(path)  # a legacy (non-zip) torch file: readable without mmap
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a class outside the allow-list: bytes that are no pickle
            raise CheckpointError(f"{path} is damaged or not a torch checkpoint (unreadable pickle): restore the "
                                  f"file, or write an earlier iteration into {layout.TRACKER_FILENAME} to load "
                                  "that one") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} holds objects that are not on the safe-load allow-list ({first}). If you trust the file, "
            "allow the class with mindspeed_llm.checkpoint.layout.register_safe_globals(...) before loading"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        # torch's zip reader: "failed finding central directory", "Ran out of input", ... for a cut file.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise CheckpointError(
            f"{path} is damaged or not a torch checkpoint ({reason}): restore the file, or write an earlier "
            f"iteration into {layout.TRACKER_FILENAME} to load that one"
        ) from None


# ---- save --------------------------------------------------------------------------------------------------------
def _unwrap(chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)


def _model_state(model: list, adapter_only: bool = False) -> dict:
    """``model`` (or ``model0..`` per virtual stage) state dicts; ``adapter_only``: the LoRA tensors alone."""
    from mindspeed_llm.lora.keys import lora_state_dict

    def one(chunk) -> dict:
        sd = _unwrap(chunk).state_dict()
        return lora_state_dict(sd) if adapter_only else sd

    if len(model) == 1:
        return {"model": one(model[0])}
    return {f"model{i}": one(chunk) for i, chunk in enumerate(model)}


def _pause_for_test(iteration: int) -> None:
    wanted = os.environ.get(PAUSE_IN_SAVE_ENV)
    if wanted and int(wanted) == iteration:
        print(f"MINDSPEED_LLM_TEST: paused in checkpoint save at iteration {iteration}", flush=True)
        while True:
            time.sleep(1)


def last_complete_checkpoint(save: str | None) -> str:
    """``iteration N in SAVE`` as the tracker names it, for messages about what is kept."""
    if not save:
        return "no checkpoint (no --save)"
    try:
        return f"iteration {layout.read_tracker(save)} in {save}"
    except CheckpointError:
        return f"no complete checkpoint in {save}"


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
        raise SaveError(f"could not write {path} ({_write_failure(path, exc)}); removed it, the last complete "
                        f"checkpoint stays: {last_complete_checkpoint(args.save)}. Free space there or give "
                        "another --save") from None


def check_weights_finite(model: list, iteration: int, save: str) -> None:
    """Before saving: NonFiniteError on every rank when a weight of any rank holds NaN/Inf (collective)."""
    bad = None
    for i, chunk in enumerate(model):
        for name, param in _unwrap(chunk).named_parameters():
            if not torch.isfinite(param.detach()).all():
                bad = f"{name}" + (f" (model chunk {i})" if len(model) > 1 else "")
                break
        if bad:
            break
    with fail_together():
        if bad:
            raise NonFiniteError(f"refusing to save iteration {iteration} into {save}: weight {bad} holds NaN/Inf "
                                 f"on rank {torch.distributed.get_rank()}; kept: {last_complete_checkpoint(save)}")


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


def save_checkpoint(state: TrainState, model: list, optimizer, scheduler, args: argparse.Namespace) -> None:
    """Save the run at ``state.iteration`` under ``--save`` in ``--ckpt-format`` (collective: every rank calls it).

    Never saves NaN/Inf weights (NonFiniteError). A failed write, or a signal, removes this save's
    temporary files and leaves the tracker naming the previous checkpoint.
    """
    from megatron.core import parallel_state as ps

    iteration = state.iteration
    check_weights_finite(model, iteration, args.save)
    if args.ckpt_format == checkpointing_dist.FORMAT:
        checkpointing_dist.save_checkpoint(state, model, optimizer, scheduler, args)
        return

    t0 = time.time()
    save = args.save
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    # Megatron-LM's rule: the CP ranks of a data-parallel replica hold the same weights, so rank 0 of
    # the data-parallel x CP group writes them (and the distributed optimizer shards over that group).
    dp_group = ps.get_data_parallel_group(with_context_parallel=True)
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    pp_size = args.pipeline_model_parallel_size
    folder = layout.checkpoint_dir_for(save, iteration, tp_rank, pp_rank, pp_size)

    rng_states = None
    if not args.no_save_rng:
        rng_states = [None] * ps.get_data_parallel_world_size(with_context_parallel=True)
        torch.distributed.all_gather_object(rng_states, get_rng_state(), group=dp_group)

    renames: list[tuple[str, str]] = []
    temporaries: list[str] = []
    created: list[str] = []
    try:
        with fail_together():
            if args.use_distributed_optimizer and not args.no_save_optim:
                target = os.path.join(folder, DISTRIB_OPTIM_FILENAME)
                _write(folder, lambda: _makedirs(folder, created), args)
                if dp_rank == 0:
                    temporaries.append(target + ".tmp")
                # Collective over the DP group (the state is gathered first); DP rank 0 writes.
                if dp_rank == 0:
                    _write(target + ".tmp", lambda: optimizer.save_parameter_state(target + ".tmp"), args)
                    renames.append((target + ".tmp", target))
                else:
                    optimizer.save_parameter_state(target + ".tmp")
            if dp_rank == 0:
                saved_args = args_to_save(args)
                ckpt: dict[str, Any] = {"args": saved_args, "checkpoint_version": layout.CHECKPOINT_VERSION,
                                        **state.checkpoint_fields(saved_args)}
                ckpt.update(_model_state(model, adapter_only=bool(getattr(args, "lora_ckpt_filter", False))))
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
        if torch.distributed.get_rank() == 0:
            _pause_for_test(iteration)
        with fail_together():
            for tmp, final in renames:
                _write(tmp, functools.partial(os.replace, tmp, final), args)
        created.clear()  # the renamed files belong to a complete rank folder now
        with fail_together():  # every rank's file is in place: the tracker may name this iteration
            if _writes_tracker(args):
                tracker = os.path.join(save, layout.TRACKER_FILENAME)
                temporaries.append(tracker + ".tmp")
                _write(tracker + ".tmp", lambda: layout.write_tracker(save, iteration), args)
    except BaseException:
        _remove_partial_save(temporaries, created)
        raise
    if torch.distributed.get_rank() == 0:
        logger.info("  successfully saved checkpoint from iteration %7d to %s [ t %d/%d, p %d/%d ] (%.1f s)",
                    iteration, save, tp_rank + 1, args.tensor_model_parallel_size, pp_rank + 1, pp_size,
                    time.time() - t0)


def _writes_tracker(args: argparse.Namespace) -> bool:
    """Global rank 0 writes the tracker; with --no-shared-storage the first process of every node does."""
    if args.no_shared_storage:
        return int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())) == 0
    return torch.distributed.get_rank() == 0


def _load_distributed_optimizer_state(optimizer, path: str) -> None:
    """``load_parameter_state`` of megatron-core 0.16.1, working around two of its gaps without TE/Apex.

    Native torch Adam keeps a per-parameter ``step`` that ``get_parameter_state_dp_zero`` does not
    save, yet the loader copies every state key (KeyError 'step'); the step is already restored from
    the param groups by ``load_state_dict`` (one tensor shared by all parameters, which torch Adam
    would increment once per parameter), so it is set aside meanwhile and put back as copies. fp32 main params are views of
    the model's leaf parameters, so the copies run under ``no_grad``.
    """
    steps = [(state, state.pop("step")) for opt in inner_torch_optimizers(optimizer) for state in opt.state.values()
             if "step" in state]
    try:
        with torch.no_grad():
            optimizer.load_parameter_state(path)
    finally:
        for state, step in steps:
            state["step"] = step
        untie_adam_steps(optimizer)


def inner_torch_optimizers(optimizer) -> list:
    """The torch optimizers inside megatron's (chained) optimizer."""
    return [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]


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


# ---- load --------------------------------------------------------------------------------------------------------
def load_checkpoint(model: list, optimizer, scheduler, args: argparse.Namespace,
                    iteration: int | str | None) -> TrainState:
    """Load ``--load`` into the model (strict), optimizer, scheduler and RNG; returns the run's state.

    ``--finetune`` (and ``release`` checkpoints) load weights only and start at iteration 0. Otherwise
    training continues after the saved iteration, as Megatron-LM does: a converted checkpoint
    (iteration 1, weights only) continues at iteration 2 and needs ``--no-load-optim`` (its optimizer
    starts fresh), which MindSpeed-LLM's example scripts pass.
    """
    from megatron.core import parallel_state as ps

    if iteration is None:
        if args.load:
            logger.info("no checkpoint in %s yet (--load is the --save folder): starting from scratch", args.load)
        return TrainState()
    if is_dist_checkpoint(args, iteration):
        return checkpointing_dist.load_checkpoint(model, optimizer, scheduler, args, iteration)
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    with fail_together():  # a damaged file on one rank stops every rank, with one line from that rank
        run = _load_rank_checkpoint(model, optimizer, scheduler, args, iteration)
    if torch.distributed.get_rank() == 0:
        logger.info("  successfully loaded checkpoint from %s [ t %d/%d, p %d/%d ] at iteration %s%s", args.load,
                    tp_rank + 1, args.tensor_model_parallel_size, pp_rank + 1, pp_size, iteration,
                    " (--finetune: weights only, starting at iteration 0)" if args.finetune else "")
    sys.stdout.flush()
    return run


def _load_weights(chunk, state_dict: dict, path: str, key: str, check_finite: bool) -> None:
    """``load_state_dict(strict=True)``; a checkpoint of another model or with NaN/Inf weights is an error."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: '{key}' is not a state dict: the file is not a Megatron checkpoint")
    try:
        _unwrap(chunk).load_state_dict(state_dict, strict=True)
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


_SCHEDULER_MISMATCH = re.compile(r"class input value (.*) and checkpoint ?value (.*) for (.*) do not match")


def _load_scheduler(scheduler, state: dict, path: str) -> None:
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
            f"{path} was trained with another LR/WD schedule: {name}{unit} is {launch} in this launch but {saved} "
            "in the checkpoint (e.g. another --train-iters, --lr, --lr-decay-iters or --lr-warmup-iters). Pass "
            "--override-opt_param-scheduler to use this launch's schedule, or --use-checkpoint-opt_param-scheduler "
            "to keep the checkpoint's"
        ) from None


def _check_zip_file(path: str) -> None:
    """CheckpointError unless ``path`` is a non-empty torch zip file (before a collective load reads it)."""
    import zipfile

    if os.path.getsize(path) == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is empty or damaged (not a torch zip file): restore it, or write an "
                              f"earlier iteration into {layout.TRACKER_FILENAME} to load that one")


def _read_rank_state(path: str) -> dict:
    """One rank file as a dict (CheckpointError otherwise)."""
    state = load_rank_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a Megatron checkpoint dict")
    return state


def _chunk_state(state: dict, path: str, key: str, n_chunks: int) -> dict:
    """The state dict of one model chunk (``model`` or ``model{i}``) of a rank file."""
    if key in state:
        return state[key]
    if n_chunks == 1:
        raise CheckpointError(f"{path} holds {', '.join(k for k in state if k.startswith('model'))} "
                              "(virtual pipeline stages): launch with the same --num-layers-per-virtual-pipeline-stage")
    raise CheckpointError(f"{path} has no {key}: it was saved without --num-layers-per-virtual-pipeline-stage (or "
                          "with another value); launch without virtual pipeline stages")


def _with_adapter(chunk, weights: dict, path: str, adapter: tuple[str, dict] | None, key: str,
                  n_chunks: int) -> dict:
    """The weights to load into a LoRA model: --load's base tensors plus the adapter's.

    The adapter comes from --lora-load's file, else from --load's own file when it holds one (a full
    LoRA checkpoint), else it keeps its initial values (a base checkpoint: the adapter starts fresh).
    """
    from mindspeed_llm.lora.keys import is_lora_key

    if not isinstance(weights, dict):
        return weights  # _load_weights names the problem
    base = {k: v for k, v in weights.items() if not is_lora_key(k)}
    if weights and not any(k.endswith(".weight") for k in base):
        raise CheckpointError(f"{path} holds only LoRA adapter tensors (saved with --lora-ckpt-filter): pass the "
                              "base model's checkpoint as --load and this folder as --lora-load")
    if adapter is not None:
        lora_path, lora_state = adapter
        lora = _chunk_state(lora_state, lora_path, key, n_chunks)
        lora = {k: v for k, v in lora.items() if is_lora_key(k)} if isinstance(lora, dict) else {}
        if not lora:
            raise CheckpointError(f"{lora_path} holds no LoRA adapter tensors: --lora-load must be the --save folder "
                                  "of a LoRA run (--lora-target-modules)")
        return {**base, **lora}
    if len(base) < len(weights):
        return weights  # a full LoRA checkpoint: loaded strictly, adapter included
    own = {k: v for k, v in _unwrap(chunk).state_dict().items() if is_lora_key(k)}
    return {**base, **own}


def _check_lora_alpha(args: argparse.Namespace, source: tuple[str, dict]) -> None:
    """An adapter trained with another --lora-alpha would load and silently scale differently: refuse it."""
    from mindspeed_llm.lora.keys import is_lora_key

    path, state = source
    recorded = getattr(state.get("args"), "lora_alpha", None)
    holds_adapter = any(is_lora_key(k) for name, sd in state.items() if name.startswith("model") and isinstance(sd, dict)
                        for k in sd)
    if holds_adapter and recorded is not None and float(recorded) != float(args.lora_alpha):
        raise CheckpointError(f"{path} holds an adapter trained with --lora-alpha {recorded:g}, this launch has "
                              f"--lora-alpha {args.lora_alpha:g}: pass --lora-alpha {recorded:g}")


def _load_rank_checkpoint(model: list, optimizer, scheduler, args: argparse.Namespace,
                          iteration: int | str) -> TrainState:
    """This rank's part of :func:`load_checkpoint` (no collective outside the data-parallel group)."""
    from megatron.core import parallel_state as ps

    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    path = layout.checkpoint_file_for(args.load, iteration, tp_rank, pp_rank, pp_size)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: the checkpoint in {args.load} is incomplete for TP rank "
                              f"{tp_rank}, PP rank {pp_rank}")
    state = _read_rank_state(path)
    check_finite = getattr(args, "check_for_nan_in_loss_and_grad", True)
    lora_on = bool(getattr(args, "lora_target_modules", None))
    adapter = None
    if lora_on and getattr(args, "lora_load", None):
        lora_iteration = find_lora_checkpoint(args)
        if lora_iteration is not None:
            lora_path = layout.checkpoint_file_for(args.lora_load, lora_iteration, tp_rank, pp_rank, pp_size)
            if not os.path.isfile(lora_path):
                raise CheckpointError(f"{lora_path} not found: the adapter checkpoint in {args.lora_load} is "
                                      f"incomplete for TP rank {tp_rank}, PP rank {pp_rank} (or was saved at "
                                      "another TP/PP)")
            adapter = (lora_path, _read_rank_state(lora_path))
            iteration = lora_iteration  # the run continues from the adapter checkpoint
    release = iteration == layout.RELEASE
    # With --lora-load, --load is the base (weights only) and the run's state is the adapter checkpoint's:
    # none there yet (--lora-load is the --save folder of a new run) starts at iteration 0, fresh optimizer.
    fresh_adapter = lora_on and bool(getattr(args, "lora_load", None)) and adapter is None
    weights_only = release or args.finetune or fresh_adapter

    for i, chunk in enumerate(model):
        key = "model" if len(model) == 1 else f"model{i}"
        weights = _chunk_state(state, path, key, len(model))
        if lora_on:
            weights = _with_adapter(chunk, weights, path, adapter, key, len(model))
            _check_lora_alpha(args, adapter or (path, state))
        _load_weights(chunk, weights, path, key, check_finite)
    if adapter is not None:
        path, state = adapter  # optimizer, scheduler, RNG and iteration come from the adapter checkpoint

    optimizer_loaded = False
    if not weights_only and not args.no_load_optim:
        if "optimizer" not in state:
            raise CheckpointError(
                f"{path} holds model weights only (no optimizer state; convert_ckpt.py writes such files): add "
                "--no-load-optim --no-load-rng to continue from it with a fresh optimizer, or --finetune to "
                "start at iteration 0"
            )
        launch_lrs = [(group.get("max_lr"), group.get("min_lr")) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{path}: its optimizer state does not fit this model ({reason}): fix the "
                                  "model and optimizer flags, or add --no-load-optim to load the weights only") from None
        if args.use_distributed_optimizer:
            optim_path = os.path.join(os.path.dirname(path), DISTRIB_OPTIM_FILENAME)
            if not os.path.isfile(optim_path):
                raise CheckpointError(f"{optim_path} not found: the checkpoint was saved without "
                                      "--use-distributed-optimizer; add --no-load-optim to load its weights")
            _check_zip_file(optim_path)
            _load_distributed_optimizer_state(optimizer, optim_path)
        if "opt_param_scheduler" not in state:
            raise CheckpointError(f"{path} holds no opt_param_scheduler: add --no-load-optim to load the weights "
                                  "with a fresh optimizer and schedule")
        if args.override_opt_param_scheduler:
            # The param groups carry max_lr/min_lr too (megatron-core 0.16.1 sets them from --lr/--min-lr) and
            # optimizer.load_state_dict brought back the checkpoint's: the launch's values are the ones asked for.
            for group, (max_lr, min_lr) in zip(optimizer.param_groups, launch_lrs):
                if max_lr is not None:
                    group["max_lr"], group["min_lr"] = max_lr, min_lr
        _load_scheduler(scheduler, state["opt_param_scheduler"], path)
        optimizer_loaded = True
    if not optimizer_loaded and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()  # main (fp32) params from the loaded weights

    if not weights_only and not args.no_load_rng:
        rng = state.get("rng_state")
        if rng:
            dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
            set_rng_state(rng[dp_rank] if len(rng) > dp_rank else rng[0])
        else:
            logger.info("%s holds no RNG state: keeping the seeded generators", path)

    run = TrainState()
    if not weights_only:
        run.restore({"iteration": iteration, **state})
        run.count_older_checkpoint(args)
    return run
