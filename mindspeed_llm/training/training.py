"""The training loop: megatron-core model chunks, DDP, optimizer, schedule, evaluation, checkpoints.

``pretrain`` has Megatron-LM's shape: the entry script gives a datasets provider, a model provider
and a forward step; everything else (micro-batching, gradient reduction, clipping, LR schedule,
evaluation, saving, resuming, logging) happens here with megatron-core's own parts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.config.groups import optimizer_config
from mindspeed_llm.console import launch_rank, print_error
from mindspeed_llm.lora.checkpoint import adapter_iteration
from mindspeed_llm.runtime import run, save_lock, signals
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint.locate import find_checkpoint, last_complete_checkpoint
from mindspeed_llm.runtime.errors import (
    USER_ERRORS,
    NonFiniteError,
    PeerFailed,
    TrainingInterrupted,
    fail_together,
)
from mindspeed_llm.runtime.initialize import initialize_megatron
from mindspeed_llm.runtime.model import get_model, plan_run
from mindspeed_llm.runtime.state import TrainState
from mindspeed_llm.runtime.tokenizer import build_tokenizer
from mindspeed_llm.training import checkpointing
from mindspeed_llm.training.training_log import (
    TrainingLogger,
    moe_aux_losses,
    num_floating_point_operations,
    print_rank_last,
)

logger = logging.getLogger("mindspeed_llm.training")


def get_scheduler(optimizer, args: argparse.Namespace):
    """megatron-core ``OptimizerParamScheduler`` in samples, set up as Megatron-LM core_v0.16.1 does.

    The warm-up from ``--lr-warmup-fraction`` stays a float (fraction x decay samples), as there.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gbs = args.global_batch_size
    if args.train_samples is None:
        decay_steps = args.lr_decay_iters * gbs
        wd_incr_steps = args.train_iters * gbs
        wsd_steps = args.lr_wsd_decay_iters * gbs if args.lr_wsd_decay_iters is not None else None
        warmup_steps = args.lr_warmup_iters * gbs
    else:
        decay_steps = args.lr_decay_samples if args.lr_decay_samples is not None else args.train_samples
        wd_incr_steps = args.train_samples
        wsd_steps = args.lr_wsd_decay_samples
        warmup_steps = args.lr_warmup_samples
    if args.lr_warmup_fraction is not None:
        warmup_steps = args.lr_warmup_fraction * decay_steps
    if warmup_steps >= decay_steps:  # megatron-core asserts it
        raise ArgumentError(
            f"the warm-up ({warmup_steps} samples) must be shorter than the decay ({decay_steps} "
            "samples): lower --lr-warmup-iters/-samples/-fraction or raise --lr-decay-iters/-samples "
            "(default: the whole run)"
        )
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay,
        wd_incr_steps=wd_incr_steps,
        wd_incr_style=args.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        wsd_decay_steps=wsd_steps,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
    )


def _wire_config_hooks(model: list, optimizer, args: argparse.Namespace):
    """Grad scaling, finalize-grads and the overlapped DDP hooks on the model config (as Megatron-LM does)."""
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.utils import get_model_config

    config = get_model_config(model[0])
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    config.timers = None
    if args.overlap_grad_reduce:
        config.no_sync_func = [c.no_sync for c in model]
        config.grad_sync_func = [c.start_grad_sync for c in model]
        if len(model) == 1:
            config.no_sync_func = config.no_sync_func[0]
            config.grad_sync_func = config.grad_sync_func[0]
    # --overlap-param-gather: the DDP forward pre-hooks gather parameters (Megatron-LM's default,
    # align_param_gather off), so no param_sync_func is set.
    return config


def _set_forward_pre_hooks(model: list, args: argparse.Namespace, enabled: bool) -> None:
    """With --overlap-param-gather, parameters are gathered in forward pre-hooks: sync them for eval/save."""
    if not args.overlap_param_gather:
        return
    for chunk in model:
        if enabled:
            chunk.enable_forward_pre_hook()
        else:
            chunk.disable_forward_pre_hook()


# ---- steps -------------------------------------------------------------------------------------------------
def _loss_sums(losses: list[dict]) -> dict[str, torch.Tensor]:
    """Per reported key, ``[sum, count]`` over the micro-batches, summed over the data-parallel ranks.

    A ``[loss_sum, num_tokens]`` pair (Megatron-LM's GPT loss) is token-weighted over the global
    batch; a single value (a legacy two-output loss function) is averaged over the micro-batches.
    Only the last pipeline stage holds losses (``{}`` elsewhere).
    """
    from megatron.core import parallel_state as ps

    if not losses or not ps.is_pipeline_last_stage(ignore_virtual=True):
        return {}
    out = {}
    for key in losses[0]:
        values = [d[key].detach().float().view(-1) for d in losses]
        if values[0].numel() == 2:
            pair = torch.vstack(values).sum(dim=0)
            # With CP each rank holds part of every sequence's tokens: the sums cover the CP ranks too.
            torch.distributed.all_reduce(pair, group=ps.get_data_parallel_group(with_context_parallel=True))
        elif values[0].numel() == 1:
            pair = torch.stack([torch.cat(values).sum(), torch.tensor(float(len(values)))])
        else:
            raise ValueError(f"loss {key!r} has shape {tuple(losses[0][key].shape)}: report a scalar or "
                             "[loss_sum, num_tokens]")
        out[key] = pair
    return out


def _reduce_losses(losses: list[dict]) -> dict[str, float | None]:
    """The reported losses of one global batch (see :func:`_loss_sums`); None for a key whose batch held no
    token to learn (an SFT batch of prompts only: its loss is not 0, it does not exist)."""
    sums = _loss_sums(losses)
    return {key: float(pair[0] / pair[1]) if pair[1] > 0 else None for key, pair in sums.items()}


def _empty_unused_memory(args: argparse.Namespace, level: int) -> None:
    """--empty-unused-memory-level: hand cached accelerator memory back (nothing is cached on the CPU)."""
    if args.empty_unused_memory_level >= level and args.device != "cpu":
        torch.cuda.empty_cache()  # on NPUs torch_npu's transfer_to_npu routes this to torch.npu


def params_l2_norm(model: list, args: argparse.Namespace) -> float:
    """L2 norm of all parameters, each counted once (Megatron-LM's ``calc_params_l2_norm``).

    TP duplicates and the last stage's copy of tied embeddings are skipped; with bf16 the fp32
    main parameters are measured (summed over data-parallel ranks where the distributed optimizer
    shards them).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    dense = torch.zeros((), dtype=torch.float32)
    sharded = torch.zeros((), dtype=torch.float32)
    for chunk in model:
        for param in chunk.parameters():
            if not (param_is_not_tensor_parallel_duplicate(param) and param_is_not_shared(param)):
                continue
            main = getattr(param, "main_param", None) if args.bf16 else None
            if args.bf16 and getattr(param, "main_param_sharded", False):
                if main is not None:
                    sharded += main.detach().float().pow(2).sum().cpu()
            else:
                data = main if main is not None else param.data
                dense += data.detach().float().pow(2).sum().cpu()
    sharded = sharded.to(torch.cuda.current_device()) if args.device != "cpu" else sharded
    # The distributed optimizer shards the main parameters over the data-parallel and CP ranks together.
    torch.distributed.all_reduce(sharded, group=ps.get_data_parallel_group(with_context_parallel=True))
    total = dense.to(sharded.device) + sharded
    torch.distributed.all_reduce(total, group=ps.get_model_parallel_group())
    return float(total.sqrt())


def _max_over_model_parallel(value: float | None, args: argparse.Namespace) -> float | None:
    """Megatron-LM's ``reduce_max_stat_across_model_parallel_group`` (None where a rank has nothing)."""
    from megatron.core import parallel_state as ps

    if torch.distributed.get_world_size(group=ps.get_model_parallel_group()) == 1:
        return value
    t = torch.tensor([-1.0 if value is None else float(value)], dtype=torch.float32)
    if args.device != "cpu":
        t = t.to(torch.cuda.current_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=ps.get_model_parallel_group())
    return None if float(t) < 0 else float(t)


def train_step(forward_step_func, data_iterator, model: list, optimizer, scheduler, args: argparse.Namespace):
    """One global batch: forward/backward over the micro-batches, reduce, clip, step, schedule.

    Returns (losses, grad norm, skipped, number of zero gradients or None).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward = get_forward_backward_func()
    losses = forward_backward(
        forward_step_func=forward_step_func,
        data_iterator=data_iterator,
        model=model,
        num_microbatches=args.num_microbatches,
        seq_length=args.seq_length,
        micro_batch_size=args.micro_batch_size,
        decoder_seq_length=args.seq_length,
        forward_only=False,
    )
    _empty_unused_memory(args, 1)
    if getattr(args, "check_for_nan_in_loss_and_grad", True):
        check_loss_and_grads_finite(losses, model, args)  # before the optimizer could apply them
    update_successful, grad_norm, num_zeros = optimizer.step()
    grad_norm = _max_over_model_parallel(None if grad_norm is None else float(grad_norm), args)
    if args.log_num_zeros_in_grad:
        num_zeros = _max_over_model_parallel(None if num_zeros is None else float(num_zeros), args)
    if update_successful:
        scheduler.step(increment=args.global_batch_size)
    _empty_unused_memory(args, 2)
    reported = _reduce_losses(losses)
    reported.update(moe_aux_losses(model, args.num_microbatches))  # {} without MoE layers
    return reported, grad_norm, not update_successful, num_zeros


def _non_finite(tensors) -> str | None:
    """"NaN" or "Inf" when any of ``tensors`` holds one (NaN first), else None.

    A tensor whose sum is finite holds neither (an Inf makes the sum Inf or NaN, a NaN makes it NaN), so
    one read-only reduction clears it; only a tensor whose sum is not finite (one holding NaN/Inf, or
    finite values whose sum overflows) gets the elementwise test, which allocates a mask per pass
    (``isfinite`` over a model's gradient buffer cost ~7% of a CPU training step).
    """
    kinds = set()
    for t in tensors:
        if t is None:
            continue
        t = t.detach()
        if t.is_floating_point() and bool(torch.isfinite(t.sum(dtype=torch.promote_types(t.dtype,
                                                                                       torch.float32)))):
            continue
        if not torch.isfinite(t).all():
            kinds.add("NaN" if torch.isnan(t).any() else "Inf")
    return "NaN" if "NaN" in kinds else ("Inf" if kinds else None)


def check_loss_and_grads_finite(losses: list[dict], model: list, args: argparse.Namespace) -> None:
    """Stop every rank when this step's loss or gradients hold NaN/Inf; one line from the first rank that saw
    it.

    Megatron-LM's --check-for-nan-in-loss-and-grad. megatron-core's own check (DDP's check_for_nan_in_grad)
    raises on the rank that sees it, a multi-line RuntimeError, while the others wait in the next
    collective; here the ranks agree in one all-gather and all stop before the optimizer step, so the
    weights in memory stay finite and nothing is saved.
    """

    loss_kind = _non_finite(v for d in losses for v in d.values() if torch.is_tensor(v))
    grads = [buf.grad_data for chunk in model
             for buf in (*getattr(chunk, "buffers", ()), *getattr(chunk, "expert_parallel_buffers", ()))]
    grad_kind = _non_finite(grads)
    code = {None: 0, "Inf": 1, "NaN": 2}
    mine = torch.tensor([code[loss_kind], code[grad_kind]], dtype=torch.int32)
    found = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(found, mine)
    seen = [(rank, int(t[0]), int(t[1])) for rank, t in enumerate(found) if t.any()]
    if not seen:
        return
    # Every rank raises the same line (run_main prints it once); it names the first rank that saw it.
    rank, loss_code, grad_code = seen[0]
    kind = {1: "Inf", 2: "NaN"}
    what = (f"the loss is {kind[loss_code]}" if loss_code else f"the gradients hold {kind[grad_code]}")
    if loss_code and grad_code:
        what += f" (gradients: {kind[grad_code]})"
    iteration = run.iteration_in_progress()
    raise NonFiniteError(
        f"iteration {iteration}: {what} on rank {rank}; stopped before the optimizer step, nothing saved "
        f"(kept: {last_complete_checkpoint(args.save)}). Lower --lr or check the data before resuming; "
        "--no-check-for-nan-in-loss-and-grad trains on"
    )


def evaluate(forward_step_func, data_iterator, model: list, args: argparse.Namespace,
             eval_iters: int) -> dict[str, float]:
    """Validation losses over ``eval_iters`` global batches (forward only), token-weighted as Megatron-LM."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model:
        chunk.eval()
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(eval_iters):
            losses = get_forward_backward_func()(
                forward_step_func=forward_step_func, data_iterator=data_iterator, model=model,
                num_microbatches=args.num_microbatches, seq_length=args.seq_length,
                micro_batch_size=args.micro_batch_size, decoder_seq_length=args.seq_length, forward_only=True,
            )
            _empty_unused_memory(args, 1)
            for key, pair in _loss_sums(losses).items():
                totals[key] = totals[key] + pair if key in totals else pair
    for chunk in model:
        chunk.train()
    return {k: float(pair[0] / pair[1].clamp(min=1)) for k, pair in totals.items()}


def _save(state: TrainState, model, optimizer, scheduler, args, last: bool = False) -> None:
    _set_forward_pre_hooks(model, args, enabled=False)
    checkpointing.save_checkpoint(state, model, optimizer, scheduler, args)
    _set_forward_pre_hooks(model, args, enabled=True)
    from mindspeed_llm.from_hf.build import export_hf_copy

    export_hf_copy(args, state.iteration, last=last or state.iteration >= args.train_iters)  # mg2hf copies


def _evaluate_and_print(label, forward_step_func, iterator, model, args, log, state: TrainState,
                        validation: bool = True):
    """Evaluate ``--eval-iters`` batches and print them; validation batches count as consumed samples."""
    if args.manual_gc and args.manual_gc_eval:
        gc.collect()
    _set_forward_pre_hooks(model, args, enabled=False)
    losses = evaluate(forward_step_func, iterator, model, args, args.eval_iters)
    _set_forward_pre_hooks(model, args, enabled=True)
    if validation:
        state.consumed_valid_samples += args.eval_iters * args.global_batch_size
    log.evaluation(label, losses, state.iteration)
    if args.manual_gc and args.manual_gc_eval:
        gc.collect()
    return losses


def _time_is_up(args: argparse.Namespace, started: float) -> bool:
    """--exit-duration-in-mins: has any rank trained that long (Megatron-LM counts from the start)?"""
    if args.exit_duration_in_mins is None:
        return False
    done = torch.tensor([int((time.time() - started) / 60.0 > args.exit_duration_in_mins)], dtype=torch.int)
    if args.device != "cpu":
        done = done.to(torch.cuda.current_device())
    torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MAX)
    return bool(done.item())


# ---- entry -------------------------------------------------------------------------------------------------
def training_plan(loaded_iteration: int, train_iters: int) -> str:
    """``training ... iterations A to B (N steps ...)``: the steps this run takes after what --load gave."""
    steps = train_iters - loaded_iteration
    if steps <= 0:
        return (f"training ... nothing to do: the loaded checkpoint is at iteration {loaded_iteration} and "
                f"--train-iters is {train_iters}")
    text = f"training ... iterations {loaded_iteration + 1} to {train_iters} ({steps} steps"
    if loaded_iteration:
        # Megatron-LM continues after the loaded iteration; a converted checkpoint is iteration 1.
        text += (
            f"; continuing after the loaded checkpoint's iteration {loaded_iteration}, as Megatron-LM does"
        )
    return text + ")"


def pretrain(train_valid_test_dataset_provider: Callable, model_provider: Callable, model_type,
             forward_step_func: Callable, extra_args_provider=None, args_defaults: dict | None = None,
             argv: list[str] | None = None, prepare_model: Callable | None = None) -> dict:
    """Megatron-LM's ``pretrain``: initialise, build model/optimizer/data, train, evaluate, save.

    ``prepare_model(model, state, args)``: called once the checkpoint is loaded, before the data (the
    preference stages build their reference model there). Returns a summary (iterations, last losses,
    mean throughput) on every rank.
    """
    started = time.time()
    args = initialize_megatron(argv, extra_args_provider, args_defaults)  # the namespace of the flags
    config = run.get_config()
    signals.configure(config.training.exit_signal_handler)
    from mindspeed_llm.training.data import check_data_sources, check_indexed_dataset, data_prefixes

    check_data_sources(args)  # a wrong --data-path fails now, not after the model is built
    for prefix in data_prefixes(args):
        check_indexed_dataset(prefix)
    tokenizer = build_tokenizer(args)
    ckpt_iteration = find_checkpoint(args)
    with fail_together():  # each rank reads its own checkpoint file
        plan_run(args, config, tokenizer, ckpt_iteration, model_type)
    args = run.get_args()  # configuration and plan, frozen; what changes from here on lives in TrainState
    resume_iteration = adapter_iteration(args) if getattr(args, "lora_load", None) else ckpt_iteration
    if _nothing_to_train(args, resume_iteration):
        return _finish(args, {"iteration": ckpt_iteration, "losses": {}, "tokens_per_s_per_device": 0.0,
                              "consumed_train_samples": 0})
    _lock_save_folder(args)

    model = get_model(model_provider, args, config)
    from megatron.core.optimizer import get_megatron_optimizer

    optimizer = get_megatron_optimizer(optimizer_config(config), model)
    scheduler = get_scheduler(optimizer, args)
    state = checkpointing.load_checkpoint(model, optimizer, scheduler, args, ckpt_iteration)
    _wire_config_hooks(model, optimizer, args)
    if prepare_model is not None:
        prepare_model(model, state, args)

    from mindspeed_llm.training.data import build_data_iterators

    train_iter, valid_iter, test_iter, do_valid, do_test = build_data_iterators(
        train_valid_test_dataset_provider, args, state, n_chunks=len(model))
    log = TrainingLogger(args)
    print_rank_last(training_plan(state.iteration, args.train_iters))

    for chunk in model:
        chunk.train()
    if args.manual_gc:
        # Megatron-LM: collections at the same iterations on every rank, not when Python decides.
        gc.disable()
        gc.collect()
    last_losses: dict[str, float] = {}
    exit_requested = False
    saved_at = None
    first_step_logged = False
    while state.iteration < args.train_iters:
        run.note_step(state.iteration + 1)  # what messages name: the iteration in progress, its save included
        t0 = time.time()
        losses, grad_norm, skipped, num_zeros = train_step(forward_step_func, train_iter, model, optimizer,
                                                           scheduler, args)
        elapsed = time.time() - t0
        state.iteration += 1
        state.consumed_train_samples += args.global_batch_size
        state.floating_point_operations_so_far += num_floating_point_operations(args, args.global_batch_size)
        iteration = state.iteration
        if losses and None not in losses.values():
            last_losses = losses
        params_norm = params_l2_norm(model, args) if args.log_params_norm else None
        lr = optimizer.param_groups[0]["lr"]
        log.step(state, losses, lr, grad_norm, optimizer.get_loss_scale().item(), skipped, elapsed,
                 num_zeros=num_zeros, params_norm=params_norm)
        if not first_step_logged:
            first_step_logged = True
            print_rank_last(f"time to first step: {_since_launch():.1f} s (from the process start)")
        if do_valid and args.eval_interval and iteration % args.eval_interval == 0:
            _evaluate_and_print(
                f"validation loss at iteration {iteration}",
                forward_step_func,
                valid_iter,
                model,
                args,
                log,
                state,
            )
        if args.save and args.save_interval and iteration % args.save_interval == 0:
            _save(state, model, optimizer, scheduler, args)
            saved_at = iteration
        reason = None
        if signals.exit_requested():  # --exit-signal-handler and SIGTERM on some rank: save, exit 0
            reason = (
                f"exiting program after receiving SIGTERM at iteration {iteration} (--exit-signal-handler): "
                + (f"checkpoint saved in {args.save}" if args.save else "no --save, nothing saved")
            )
        elif _time_is_up(args, started):
            reason = f"exiting program after {args.exit_duration_in_mins} minutes (--exit-duration-in-mins)"
        elif args.exit_interval and iteration % args.exit_interval == 0:
            reason = f"exiting program at iteration {iteration} (--exit-interval {args.exit_interval})"
        if reason:
            if args.save and saved_at != iteration:
                _save(state, model, optimizer, scheduler, args, last=True)
                saved_at = iteration
            print_rank_last(reason)
            exit_requested = True
            break
        if args.manual_gc and args.manual_gc_interval and iteration % args.manual_gc_interval == 0:
            gc.collect()

    if not exit_requested:
        # Megatron-LM's order: the last save, then validation and test (the saved run state excludes them).
        if args.save and saved_at != state.iteration and state.iteration > 0:
            _save(state, model, optimizer, scheduler, args)
        if do_valid:
            _evaluate_and_print(f"validation loss at iteration {state.iteration} on validation set",
                                forward_step_func, valid_iter, model, args, log, state)
        if do_test:
            _evaluate_and_print(
                f"validation loss at iteration {state.iteration} on test set",
                forward_step_func,
                test_iter,
                model,
                args,
                log,
                state,
                validation=False,
            )
    if args.manual_gc:
        gc.enable()
    tokens_per_s = (
        args.global_batch_size * args.seq_length * log.total_iters / log.total_time / args.world_size
        if log.total_time > 0
        else 0.0
    )
    summary = {"iteration": state.iteration, "losses": last_losses, "tokens_per_s_per_device": tokens_per_s,
               "consumed_train_samples": state.consumed_train_samples}
    # The losses are in the per-interval lines above (means over each --log-interval); one step's loss here
    # would be a second, different "final loss".
    print_rank_last(f"[after training] iterations: {state.iteration} | consumed samples: "
                    f"{state.consumed_train_samples} | mean throughput (tokens/s/device): {tokens_per_s:.1f}")
    log.close()
    return _finish(args, summary)


def _since_launch() -> float:
    """Seconds since this process started (its interpreter, imports and start-up included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def _finish(args: argparse.Namespace, summary: dict) -> dict:
    """End of a run on every rank: release the --save lock, tear down the process group."""
    from megatron.core import parallel_state as ps

    torch.distributed.barrier()
    if args.save:
        save_lock.release_save_folder(args.save)
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    return summary


# How long the first rank to report an error waits for the others to report the same one, and how long
# those wait for its line before exiting (torchrun stops the whole group once one rank has exited).
_GATHER_S = 3.0
_PRINTED_WAIT_S = 10.0


def _claim_error(store, key: str, world: int) -> tuple[bool, bool]:
    """(this rank prints the error ``key``, every rank found it), agreed through the process group's store."""
    if store.add(key, 1) != 1:
        store.wait([key + "/printed"], datetime.timedelta(seconds=_PRINTED_WAIT_S))
        return False, True
    deadline = time.monotonic() + _GATHER_S
    while store.add(key, 0) < world and time.monotonic() < deadline:
        time.sleep(0.02)
    everywhere = store.add(key, 0) >= world
    return True, everywhere


def _error_key(message: str) -> str:
    """The store key under which the ranks agree who prints ``message``."""
    return "mindspeed_llm/error/" + hashlib.sha1(message.encode()).hexdigest()


def report_error(message: str) -> None:
    """Print a user error once, as one line: ``error: ...``, or ``[rank N] error: ...`` if only some ranks
    found it.

    Before the process group exists the flags and world size are the same on every rank, so rank 0
    prints. After, the ranks that hit the same message agree through the store who prints it.
    """
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if launch_rank()[0] == 0 or dist.is_initialized():
            print_error(message)
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    key = _error_key(message)
    store = None
    try:
        store = dist.distributed_c10d._get_default_store()
        mine, everywhere = _claim_error(store, key, world)
    except Exception:  # noqa: BLE001 - no store (it lived in an exited rank): speak for this rank
        mine, everywhere = True, False
    if mine:
        print_error(message, rank=None if everywhere else rank)
        if store is not None:
            with contextlib.suppress(Exception):
                store.set(key + "/printed", "1")


def _nothing_to_train(args: argparse.Namespace, ckpt_iteration) -> bool:
    """True (and says so) when --load's checkpoint is already at or past --train-iters: leave it as it is."""
    if not isinstance(ckpt_iteration, int) or args.finetune or ckpt_iteration < args.train_iters:
        return False
    print_rank_last(
        f"nothing to train: the checkpoint in {getattr(args, 'lora_load', None) or args.load} is at "
        f"iteration {ckpt_iteration} and --train-iters is {args.train_iters}; it is left as it is (raise "
        f"--train-iters above {ckpt_iteration} to train on)"
    )
    return True


def _lock_save_folder(args: argparse.Namespace) -> None:
    """Take the --save lock (global rank 0, or every node's first process with --no-shared-storage)."""
    if not args.save:
        return
    local_rank = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank()))
    takes_lock = local_rank == 0 if args.no_shared_storage else torch.distributed.get_rank() == 0
    with fail_together():
        if takes_lock:
            save_lock.lock_save_folder(args.save)
            save_lock.remove_stale_temporaries(args.save)
    os.makedirs(args.save, exist_ok=True)


# Messages of torch.distributed (gloo) when a peer process has gone away mid-collective.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket closed")


def _interrupted_line(signum: int) -> str:
    """One line for a run a signal ended: where it was and which checkpoint is kept."""
    import signal as signal_module


    name = signal_module.Signals(signum).name + (" (Ctrl-C)" if signum == signal_module.SIGINT else "")
    try:
        args = run.get_args()
    except RuntimeError:
        return f"interrupted by {name} during start-up; nothing was written"
    step = run.iteration_in_progress()
    where = f"during iteration {step}" if step is not None else "before training"
    kept = last_complete_checkpoint(args.save)
    return (f"interrupted by {name} {where}; no temporary files left, kept: {kept}"
            + (f" (resume with --load {args.save})" if args.save and "iteration" in kept else ""))


def run_main(main: Callable[[], object], user_error_status: int = 1) -> None:
    """Run an entry point; user errors print one line and exit ``user_error_status`` (1 from training ranks,
    2 from the tools: inference.py, as convert_ckpt.py), a signal 128 + its number (130 for Ctrl-C)."""
    rank = launch_rank()[0]
    signals.install()
    try:
        main()
    except TrainingInterrupted as exc:
        _exit_interrupted(exc.signum, rank)
    except PeerFailed as exc:
        _wait_for_report(
            exc.messages
        )  # the failing rank prints; torchrun stops the group once one rank exits
        sys.exit(user_error_status)
    except (ArgumentError, CheckpointError, *USER_ERRORS) as exc:
        report_error(str(exc))
        _exit(user_error_status)
    except RuntimeError as exc:
        if signals.interrupted_by() is not None:  # a collective the signal broke on the way out
            _exit_interrupted(signals.interrupted_by(), rank)
        if any(text in str(exc) for text in _PEER_GONE):
            print_error(
                f"rank {rank} lost another rank mid-collective ({str(exc).splitlines()[0][:120]}): that "
                "rank ended first, its own message says why"
            )
            sys.exit(1)
        raise
    finally:
        signals.uninstall()


def _exit(code: int) -> None:
    """Leave after a user error was reported: the process group is torn down first, not by the interpreter's
    exit (gloo's threads torn down in static destruction aborted a process once in CI: exit -6 after its
    line)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()
    sys.exit(code)


def _wait_for_report(messages: list[str]) -> None:
    """Wait (a few seconds at most) until the rank that failed has printed its line."""
    dist = torch.distributed
    if not messages or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with contextlib.suppress(Exception):  # no store any more: nothing to wait for
        store = dist.distributed_c10d._get_default_store()
        store.wait([_error_key(messages[0]) + "/printed"], datetime.timedelta(seconds=_PRINTED_WAIT_S))


def _exit_interrupted(signum: int, rank: int) -> None:
    """Print the interrupt line (global rank 0) and exit with 128 + signum."""
    if rank == 0:
        print_error(_interrupted_line(signum))
    sys.exit(128 + signum)
