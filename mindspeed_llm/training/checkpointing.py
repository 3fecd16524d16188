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

Consumed samples live in ``args`` (``consumed_train_samples``, ``consumed_valid_samples``), as in
Megatron-LM, so a resumed run reads the data from where the saved one stopped.

Test-only hook: ``MINDSPEED_LLM_TEST_PAUSE_IN_SAVE=N`` makes the save of iteration N print
``MINDSPEED_LLM_TEST: paused in checkpoint save at iteration N`` once the new files are written under
their temporary names, and then sleep until the process is killed. The SIGKILL test uses it to land
its kill inside a save every time; it has no other use.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import Any

import numpy as np
import torch

from mindspeed_llm.checkpoint import layout
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.training import checkpointing_dist

logger = logging.getLogger(__name__)

DISTRIB_OPTIM_FILENAME = "distrib_optim.pt"
PAUSE_IN_SAVE_ENV = "MINDSPEED_LLM_TEST_PAUSE_IN_SAVE"

# Args that describe the model and must match a checkpoint being loaded: (attribute, flag).
_SHAPE_ARGS = (
    ("num_layers", "--num-layers"), ("hidden_size", "--hidden-size"), ("ffn_hidden_size", "--ffn-hidden-size"),
    ("num_attention_heads", "--num-attention-heads"), ("num_query_groups", "--num-query-groups"),
    ("kv_channels", "--kv-channels"), ("add_qkv_bias", "--add-qkv-bias"), ("qk_layernorm", "--qk-layernorm"),
    ("untie_embeddings_and_output_weights", "--untie-embeddings-and-output-weights"),
)
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
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if _plain(v)})


def same_folder(a: str | None, b: str | None) -> bool:
    """True when two paths name the same folder (existing or not)."""
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


# ---- before the model exists: what is there to load, and does it fit? ----------------------------------------
def find_checkpoint(args: argparse.Namespace) -> int | str | None:
    """The tracker's iteration under ``--load``; None for a fresh start (only when --load == --save)."""
    load = args.load
    if not load:
        return None
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
    wrong = []
    for attr, flag in _SHAPE_ARGS:
        if not hasattr(ckpt_args, attr):
            continue
        mine, theirs = getattr(args, attr), getattr(ckpt_args, attr)
        if mine != theirs:
            wrong.append(f"{flag} {mine} (checkpoint: {theirs})")
    if wrong:
        raise CheckpointError(f"{where} holds another model than this launch describes: {'; '.join(wrong)}. "
                              "Fix the model flags to the checkpoint's values")


def adopt_padded_vocab(args: argparse.Namespace, ckpt_args: argparse.Namespace, tokenizer_vocab: int,
                       where: str) -> None:
    """Use the checkpoint's padded vocabulary size, or name the ``--padded-vocab-size`` to pass."""
    padded = getattr(ckpt_args, "padded_vocab_size", None)
    if padded is None:
        return
    if args.padded_vocab_size is not None and args.padded_vocab_size != padded:
        raise CheckpointError(f"{where} has a padded vocabulary of {padded} rows but --padded-vocab-size is "
                              f"{args.padded_vocab_size}: pass --padded-vocab-size {padded} (or drop the flag)")
    if tokenizer_vocab > padded:
        raise CheckpointError(f"the tokenizer has {tokenizer_vocab} tokens but {where}'s embedding has only "
                              f"{padded} rows: use the tokenizer the checkpoint was converted with")
    args.padded_vocab_size = padded


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
    return state.get("args") or argparse.Namespace(), f"the checkpoint {args.load} (iteration {iteration})"


def load_rank_file(path: str, *, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` of a rank file; an unknown pickled class becomes a clear error."""
    import pickle

    try:
        return layout.safe_torch_load(path, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} holds objects that are not on the safe-load allow-list ({first}). If you trust the file, "
            "allow the class with mindspeed_llm.checkpoint.layout.register_safe_globals(...) before loading"
        ) from None


# ---- RNG ---------------------------------------------------------------------------------------------------------
def get_rng_state() -> dict:
    """Python, numpy, torch and megatron's model-parallel RNG tracker states of this rank."""
    from megatron.core import tensor_parallel

    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(),
        "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    from megatron.core import tensor_parallel

    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    torch.cuda.set_rng_state(state["cuda_rng_state"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


# ---- save --------------------------------------------------------------------------------------------------------
def _unwrap(chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)


def _model_state(model: list) -> dict:
    if len(model) == 1:
        return {"model": _unwrap(model[0]).state_dict()}
    return {f"model{i}": _unwrap(chunk).state_dict() for i, chunk in enumerate(model)}


def _pause_for_test(iteration: int) -> None:
    wanted = os.environ.get(PAUSE_IN_SAVE_ENV)
    if wanted and int(wanted) == iteration:
        print(f"MINDSPEED_LLM_TEST: paused in checkpoint save at iteration {iteration}", flush=True)
        while True:
            time.sleep(1)


def save_checkpoint(iteration: int, model: list, optimizer, scheduler, args: argparse.Namespace,
                    num_floating_point_operations_so_far: float = 0.0) -> None:
    """Save iteration ``iteration`` under ``--save`` in ``--ckpt-format`` (collective: every rank calls it)."""
    from megatron.core import parallel_state as ps

    if args.ckpt_format == checkpointing_dist.FORMAT:
        checkpointing_dist.save_checkpoint(iteration, model, optimizer, scheduler, args,
                                           num_floating_point_operations_so_far)
        return

    t0 = time.time()
    save = args.save
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    dp_group = ps.get_data_parallel_group()
    dp_rank = ps.get_data_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    folder = layout.checkpoint_dir_for(save, iteration, tp_rank, pp_rank, pp_size)

    rng_states = None
    if not args.no_save_rng:
        rng_states = [None] * ps.get_data_parallel_world_size()
        torch.distributed.all_gather_object(rng_states, get_rng_state(), group=dp_group)

    renames: list[tuple[str, str]] = []
    if args.use_distributed_optimizer and not args.no_save_optim:
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, DISTRIB_OPTIM_FILENAME)
        optimizer.save_parameter_state(target + ".tmp")  # collective over the DP group; DP rank 0 writes
        if dp_rank == 0:
            renames.append((target + ".tmp", target))

    if dp_rank == 0:
        state: dict[str, Any] = {
            "args": args_to_save(args), "checkpoint_version": layout.CHECKPOINT_VERSION, "iteration": iteration,
            "num_floating_point_operations_so_far": num_floating_point_operations_so_far,
        }
        state.update(_model_state(model))
        if not args.no_save_optim:
            state["optimizer"] = optimizer.state_dict()
            state["opt_param_scheduler"] = scheduler.state_dict()
        if rng_states is not None:
            state["rng_state"] = rng_states
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, layout.MODEL_FILENAME)
        torch.save(state, target + ".tmp")
        renames.append((target + ".tmp", target))
    if torch.distributed.get_rank() == 0:
        _pause_for_test(iteration)
    for tmp, final in renames:
        os.replace(tmp, final)
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        layout.write_tracker(save, iteration)
        logger.info("  successfully saved checkpoint from iteration %7d to %s [ t %d/%d, p %d/%d ] (%.1f s)",
                    iteration, save, tp_rank + 1, args.tensor_model_parallel_size, pp_rank + 1, pp_size,
                    time.time() - t0)
    torch.distributed.barrier()


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
                    iteration: int | str | None) -> tuple[int, float]:
    """Load ``--load`` into the model (strict), optimizer, scheduler and RNG; returns (iteration, FLOPs so far).

    ``--finetune`` (and ``release`` checkpoints) load weights only and start at iteration 0. Otherwise
    training continues after the saved iteration, as Megatron-LM does: a converted checkpoint
    (iteration 1, weights only) continues at iteration 2 and needs ``--no-load-optim`` (its optimizer
    starts fresh), which MindSpeed-LLM's example scripts pass.
    """
    from megatron.core import parallel_state as ps

    if iteration is None:
        if args.load:
            logger.info("no checkpoint in %s yet (--load is the --save folder): starting from scratch", args.load)
        return 0, 0.0
    if is_dist_checkpoint(args, iteration):
        return checkpointing_dist.load_checkpoint(model, optimizer, scheduler, args, iteration)
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = args.pipeline_model_parallel_size
    path = layout.checkpoint_file_for(args.load, iteration, tp_rank, pp_rank, pp_size)
    state = load_rank_file(path)
    release = iteration == layout.RELEASE
    weights_only = release or args.finetune

    if len(model) == 1:
        if "model" not in state:
            raise CheckpointError(f"{path} holds {', '.join(k for k in state if k.startswith('model'))} "
                                  "(virtual pipeline stages): launch with the same "
                                  "--num-layers-per-virtual-pipeline-stage")
        _unwrap(model[0]).load_state_dict(state["model"], strict=True)
    else:
        for i, chunk in enumerate(model):
            if f"model{i}" not in state:
                raise CheckpointError(f"{path} has no model{i}: it was saved without "
                                      "--num-layers-per-virtual-pipeline-stage (or with another value); "
                                      "launch without virtual pipeline stages")
            _unwrap(chunk).load_state_dict(state[f"model{i}"], strict=True)

    optimizer_loaded = False
    if not weights_only and not args.no_load_optim:
        if "optimizer" not in state:
            raise CheckpointError(
                f"{path} holds model weights only (no optimizer state; convert_ckpt.py writes such files): add "
                "--no-load-optim --no-load-rng to continue from it with a fresh optimizer, or --finetune to "
                "start at iteration 0"
            )
        optimizer.load_state_dict(state["optimizer"])
        if args.use_distributed_optimizer:
            optim_path = os.path.join(os.path.dirname(path), DISTRIB_OPTIM_FILENAME)
            if not os.path.isfile(optim_path):
                raise CheckpointError(f"{optim_path} not found: the checkpoint was saved without "
                                      "--use-distributed-optimizer; add --no-load-optim to load its weights")
            _load_distributed_optimizer_state(optimizer, optim_path)
        scheduler.load_state_dict(state["opt_param_scheduler"])
        optimizer_loaded = True
    if not optimizer_loaded and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()  # main (fp32) params from the loaded weights

    if not weights_only and not args.no_load_rng:
        rng = state.get("rng_state")
        if rng:
            dp_rank = ps.get_data_parallel_rank()
            set_rng_state(rng[dp_rank] if len(rng) > dp_rank else rng[0])
        else:
            logger.info("%s holds no RNG state: keeping the seeded generators", path)

    ckpt_args = state.get("args")
    flops = 0.0
    if weights_only:
        start = 0
    else:
        start = int(state.get("iteration", iteration))
        args.consumed_train_samples = int(getattr(ckpt_args, "consumed_train_samples", 0) or 0)
        args.consumed_valid_samples = int(getattr(ckpt_args, "consumed_valid_samples", 0) or 0)
        flops = float(state.get("num_floating_point_operations_so_far", 0.0))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        logger.info("  successfully loaded checkpoint from %s [ t %d/%d, p %d/%d ] at iteration %s%s", args.load,
                    tp_rank + 1, args.tensor_model_parallel_size, pp_rank + 1, pp_size, iteration,
                    " (--finetune: weights only, starting at iteration 0)" if args.finetune else "")
    sys.stdout.flush()
    return start, flops
