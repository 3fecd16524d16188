"""The training loop: megatron-core model chunks, DDP, optimizer, schedule, evaluation, checkpoints.

``pretrain`` has Megatron-LM's shape: the entry script gives a datasets provider, a model provider
and a forward step; everything else (micro-batching, gradient reduction, clipping, LR schedule,
evaluation, saving, resuming, logging) happens here with megatron-core's own parts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from mindspeed_llm.checkpoint import mapping
from mindspeed_llm.checkpoint.errors import CheckpointError
from mindspeed_llm.console import launch_rank, print_error
from mindspeed_llm.training import checkpointing, save_lock, signals
from mindspeed_llm.training.arguments import (
    ArgumentError,
    ddp_config_from_args,
    model_config_from_args,
    optimizer_config_from_args,
)
from mindspeed_llm.training.errors import (
    USER_ERRORS,
    DataError,
    NonFiniteError,
    PeerFailed,
    TrainingInterrupted,
    fail_together,
)
from mindspeed_llm.training.initialize import initialize_megatron
from mindspeed_llm.training.tokenizer import build_tokenizer
from mindspeed_llm.training.training_log import TrainingLogger, num_floating_point_operations, print_rank_last

logger = logging.getLogger("mindspeed_llm.training")

_STATE: dict = {}


def get_tokenizer():
    """The tokenizer of this run (for dataset providers)."""
    return _STATE["tokenizer"]


def get_model_config():
    """Our :class:`ModelConfig` of this run (for model providers)."""
    return _STATE["model_config"]


# ---- vocabulary and model -------------------------------------------------------------------------------------
def padded_vocab_size(vocab: int, args: argparse.Namespace) -> int:
    """Megatron-LM's padding: up to a multiple of ``--make-vocab-size-divisible-by`` x TP."""
    tp = args.tensor_model_parallel_size
    if args.padded_vocab_size is not None:
        if args.padded_vocab_size < vocab:
            raise ArgumentError(f"--padded-vocab-size {args.padded_vocab_size} is smaller than the tokenizer's "
                                f"{vocab} tokens: use at least {vocab}")
        if args.padded_vocab_size % tp:
            raise ArgumentError(f"--padded-vocab-size {args.padded_vocab_size} is not divisible by "
                                f"--tensor-model-parallel-size {tp}")
    return mapping.padded_vocab_size(vocab, tp, args.make_vocab_size_divisible_by, args.padded_vocab_size)


def prepare_model_config(args: argparse.Namespace, tokenizer, ckpt_iteration) -> None:
    """Check the launch against ``--load``'s checkpoint, settle the padded vocabulary, build ModelConfig."""
    from mindspeed_llm.models.families import ModelConfig, UnsupportedModelError

    base, rows = None, None
    if ckpt_iteration is not None:
        ckpt_args, where = checkpointing.read_checkpoint_args(args, ckpt_iteration)
        checkpointing.check_checkpoint_args(args, ckpt_args, where,
                                            reshardable=checkpointing.is_dist_checkpoint(args, ckpt_iteration))
        checkpointing.adopt_padded_vocab(args, ckpt_args, tokenizer.vocab_size, where)
        if getattr(ckpt_args, "hf_config", None):
            try:  # the recorded HF settings (RoPE scaling, sliding window, ...) are the model's: refuse, never drop
                base = ModelConfig.from_hf_config(dict(ckpt_args.hf_config))
            except (UnsupportedModelError, KeyError, ValueError) as exc:
                raise CheckpointError(f"{where}: its recorded HF config is refused: {exc}") from None
        rows = getattr(ckpt_args, "hf_vocab_size", None)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args)
    rows = min(rows or args.padded_vocab_size, args.padded_vocab_size)
    model_config = model_config_from_args(args, rows, base)
    try:
        model_config.check_sequence_length(args.seq_length, "--seq-length")
    except UnsupportedModelError as exc:
        raise ArgumentError(str(exc)) from None
    # Recorded in every saved checkpoint so that convert_ckpt.py mg->hf can rebuild the HF config.
    args.hf_config = model_config.to_hf_config()
    args.hf_architecture = model_config.architecture
    args.hf_vocab_size = rows
    _STATE["model_config"] = model_config


def get_model(model_provider: Callable, args: argparse.Namespace) -> list:
    """Model chunks of this rank (one per virtual stage), Float16Module for bf16, wrapped in megatron DDP."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    vpp = args.virtual_pipeline_model_parallel_size
    chunks = []
    for i in range(vpp or 1):
        vp_stage = i if vpp else None
        chunk = model_provider(
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        )
        chunks.append(chunk)
    for chunk in chunks:
        for param in chunk.parameters():
            from megatron.core import tensor_parallel

            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    n_params = sum(p.numel() for c in chunks for p in c.parameters())
    if ps.get_data_parallel_rank() == 0:
        print(f" > number of parameters on (tensor, pipeline) model parallel rank "
              f"({ps.get_tensor_model_parallel_rank()}, {ps.get_pipeline_model_parallel_rank()}): {n_params}",
              flush=True)
    config = chunks[0].config
    if args.bf16:
        chunks = [Float16Module(config, c) for c in chunks]
    ddp_config = ddp_config_from_args(args)
    return [DistributedDataParallel(config=config, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)]


def get_scheduler(optimizer, args: argparse.Namespace):
    """megatron-core ``OptimizerParamScheduler`` in samples, as Megatron-LM sets it up for --train-iters."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gbs = args.global_batch_size
    decay_steps = args.lr_decay_iters * gbs
    if args.lr_warmup_fraction is not None:
        warmup_steps = int(args.lr_warmup_fraction * decay_steps)
    else:
        warmup_steps = args.lr_warmup_iters * gbs
    wsd_steps = args.lr_wsd_decay_iters * gbs if args.lr_wsd_decay_iters else None
    return OptimizerParamScheduler(
        optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr, lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps, lr_decay_style=args.lr_decay_style, start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay, wd_incr_steps=args.train_iters * gbs, wd_incr_style=args.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        wsd_decay_steps=wsd_steps, lr_wsd_decay_style=args.lr_wsd_decay_style,
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


# ---- steps ------------------------------------------------------------------------------------------------------
def _reduce_losses(losses: list[dict]) -> dict[str, float]:
    """Mean over micro-batches of each reported loss (only on the last pipeline stage, else {})."""
    from megatron.core import parallel_state as ps

    if not losses or not ps.is_pipeline_last_stage(ignore_virtual=True):
        return {}
    out = {}
    for key in losses[0]:
        out[key] = float(torch.stack([d[key].float() for d in losses]).mean().item())
    return out


def train_step(forward_step_func, data_iterator, model: list, optimizer, scheduler, args: argparse.Namespace):
    """One global batch: forward/backward over the micro-batches, reduce, clip, step, schedule."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward = get_forward_backward_func()
    losses = forward_backward(
        forward_step_func=forward_step_func, data_iterator=data_iterator, model=model,
        num_microbatches=args.num_microbatches, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
        decoder_seq_length=args.seq_length, forward_only=False,
    )
    if getattr(args, "check_for_nan_in_loss_and_grad", True):
        check_loss_and_grads_finite(losses, model, args)  # before the optimizer could apply them
    update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=args.global_batch_size)
    return _reduce_losses(losses), (None if grad_norm is None else float(grad_norm)), not update_successful


def _non_finite(tensors) -> str | None:
    """"NaN" or "Inf" when any of ``tensors`` holds one (NaN first), else None."""
    kinds = set()
    for t in tensors:
        if t is None:
            continue
        t = t.detach()
        if not torch.isfinite(t).all():
            kinds.add("NaN" if torch.isnan(t).any() else "Inf")
    return "NaN" if "NaN" in kinds else ("Inf" if kinds else None)


def check_loss_and_grads_finite(losses: list[dict], model: list, args: argparse.Namespace) -> None:
    """Stop every rank when this step's loss or gradients hold NaN/Inf; one line from the first rank that saw it.

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
    iteration = getattr(args, "curr_iteration", 0) + 1
    from mindspeed_llm.training.checkpointing import last_complete_checkpoint

    raise NonFiniteError(
        f"iteration {iteration}: {what} on rank {rank}; stopped before the optimizer step, nothing saved "
        f"(kept: {last_complete_checkpoint(args.save)}). Lower --lr or check the data before resuming; "
        "--no-check-for-nan-in-loss-and-grad trains on"
    )


def evaluate(forward_step_func, data_iterator, model: list, args: argparse.Namespace,
             eval_iters: int) -> dict[str, float]:
    """Mean validation losses over ``eval_iters`` global batches (forward only)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model:
        chunk.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(eval_iters):
            losses = get_forward_backward_func()(
                forward_step_func=forward_step_func, data_iterator=data_iterator, model=model,
                num_microbatches=args.num_microbatches, seq_length=args.seq_length,
                micro_batch_size=args.micro_batch_size, decoder_seq_length=args.seq_length, forward_only=True,
            )
            for key, value in _reduce_losses(losses).items():
                totals[key] = totals.get(key, 0.0) + value
            args.consumed_valid_samples += args.global_batch_size
    for chunk in model:
        chunk.train()
    return {k: v / eval_iters for k, v in totals.items()}


def _save(iteration, model, optimizer, scheduler, args, flops) -> None:
    _set_forward_pre_hooks(model, args, enabled=False)
    checkpointing.save_checkpoint(iteration, model, optimizer, scheduler, args, flops)
    _set_forward_pre_hooks(model, args, enabled=True)


def _evaluate_and_print(label, forward_step_func, iterator, model, args, log, iteration):
    _set_forward_pre_hooks(model, args, enabled=False)
    losses = evaluate(forward_step_func, iterator, model, args, args.eval_iters)
    _set_forward_pre_hooks(model, args, enabled=True)
    log.evaluation(label, losses, iteration)
    return losses


# ---- entry ------------------------------------------------------------------------------------------------------
def training_plan(loaded_iteration: int, train_iters: int) -> str:
    """``training ... iterations A to B (N steps ...)``: the steps this run takes after what --load gave."""
    steps = train_iters - loaded_iteration
    if steps <= 0:
        return (f"training ... nothing to do: the loaded checkpoint is at iteration {loaded_iteration} and "
                f"--train-iters is {train_iters}")
    text = f"training ... iterations {loaded_iteration + 1} to {train_iters} ({steps} steps"
    if loaded_iteration:
        # Megatron-LM continues after the loaded iteration; a converted checkpoint is iteration 1.
        text += f"; continuing after the loaded checkpoint's iteration {loaded_iteration}, as Megatron-LM does"
    return text + ")"


def pretrain(train_valid_test_dataset_provider: Callable, model_provider: Callable, model_type,
             forward_step_func: Callable, extra_args_provider=None, args_defaults: dict | None = None,
             argv: list[str] | None = None) -> dict:
    """Megatron-LM's ``pretrain``: initialise, build model/optimizer/data, train, evaluate, save.

    Returns a summary (iterations, last losses, mean throughput) on every rank.
    """
    args = initialize_megatron(argv, extra_args_provider, args_defaults)
    signals.configure(args.exit_signal_handler)
    args.model_type = getattr(model_type, "name", str(model_type))
    from mindspeed_llm.training.data import check_indexed_dataset, parse_blend

    for prefix in parse_blend(args.data_path)[0]:  # a wrong --data-path fails now, not after the model is built
        check_indexed_dataset(prefix)
    tokenizer = build_tokenizer(args)
    _STATE["tokenizer"] = tokenizer
    ckpt_iteration = checkpointing.find_checkpoint(args)
    with fail_together():  # each rank reads its own checkpoint file
        prepare_model_config(args, tokenizer, ckpt_iteration)
    if _nothing_to_train(args, ckpt_iteration):
        return _finish(args, {"iteration": ckpt_iteration, "losses": {}, "tokens_per_s_per_device": 0.0,
                              "consumed_train_samples": 0})
    _lock_save_folder(args)

    model = get_model(model_provider, args)
    from megatron.core.optimizer import get_megatron_optimizer

    optimizer = get_megatron_optimizer(optimizer_config_from_args(args), model)
    scheduler = get_scheduler(optimizer, args)
    iteration, flops_so_far = checkpointing.load_checkpoint(model, optimizer, scheduler, args, ckpt_iteration)
    _wire_config_hooks(model, optimizer, args)

    from mindspeed_llm.training.data import build_data_iterator, train_valid_test_num_samples

    train_ds, valid_ds, test_ds = train_valid_test_dataset_provider(train_valid_test_num_samples(args))
    if train_ds is None and args.train_iters > iteration:
        raise DataError(f"--split {args.split} leaves no training data in --data-path {' '.join(args.data_path)}: "
                        "give the first (training) share a non-zero value, e.g. --split 969,30,1")

    n_chunks = len(model)

    def iterators(dataset, consumed, cyclic):
        its = [build_data_iterator(dataset, consumed, args, cyclic=cyclic) for _ in range(n_chunks)]
        return its if n_chunks > 1 else its[0]

    train_iter = iterators(train_ds, args.consumed_train_samples, False)
    valid_iter = iterators(valid_ds, args.consumed_valid_samples, True) if valid_ds is not None else None
    do_valid = valid_iter is not None and args.eval_iters > 0 and args.eval_interval
    log = TrainingLogger(args)
    print_rank_last(training_plan(iteration, args.train_iters))

    for chunk in model:
        chunk.train()
    last_losses: dict[str, float] = {}
    exit_requested = False
    saved_at = None
    while iteration < args.train_iters:
        args.curr_iteration = iteration
        t0 = time.time()
        losses, grad_norm, skipped = train_step(forward_step_func, train_iter, model, optimizer, scheduler, args)
        elapsed = time.time() - t0
        iteration += 1
        args.consumed_train_samples += args.global_batch_size
        flops_so_far += num_floating_point_operations(args, args.global_batch_size)
        if losses:
            last_losses = losses
        lr = optimizer.param_groups[0]["lr"]
        log.step(iteration, losses, lr, grad_norm, optimizer.get_loss_scale().item(), skipped, elapsed)
        if do_valid and iteration % args.eval_interval == 0:
            _evaluate_and_print(f"validation loss at iteration {iteration}", forward_step_func, valid_iter, model,
                                args, log, iteration)
        if args.save and args.save_interval and iteration % args.save_interval == 0:
            _save(iteration, model, optimizer, scheduler, args, flops_so_far)
            saved_at = iteration
        if signals.exit_requested():  # --exit-signal-handler and SIGTERM on some rank: save, exit 0
            if args.save and saved_at != iteration:
                _save(iteration, model, optimizer, scheduler, args, flops_so_far)
                saved_at = iteration
            print_rank_last(f"exiting program after receiving SIGTERM at iteration {iteration} "
                            f"(--exit-signal-handler): " + (f"checkpoint saved in {args.save}" if args.save
                                                            else "no --save, nothing saved"))
            exit_requested = True
            break
        if args.exit_interval and iteration % args.exit_interval == 0:
            if args.save and saved_at != iteration:
                _save(iteration, model, optimizer, scheduler, args, flops_so_far)
                saved_at = iteration
            print_rank_last(f"exiting program at iteration {iteration} (--exit-interval {args.exit_interval})")
            exit_requested = True
            break

    if not exit_requested:
        if do_valid and iteration % args.eval_interval:
            _evaluate_and_print("validation loss at the end of training", forward_step_func, valid_iter, model,
                                args, log, iteration)
        if args.save and saved_at != iteration and iteration > 0:
            _save(iteration, model, optimizer, scheduler, args, flops_so_far)
        if test_ds is not None and args.eval_iters > 0:
            test_iter = iterators(test_ds, 0, True)
            _evaluate_and_print("test loss at the end of training", forward_step_func, test_iter, model, args, log,
                                iteration)
    tokens_per_s = (args.global_batch_size * args.seq_length * log.total_iters / log.total_time / args.world_size
                    if log.total_time > 0 else 0.0)
    summary = {"iteration": iteration, "losses": last_losses, "tokens_per_s_per_device": tokens_per_s,
               "consumed_train_samples": args.consumed_train_samples}
    # The losses are in the per-interval lines above (means over each --log-interval); one step's loss here
    # would be a second, different "final loss".
    print_rank_last(f"[after training] iterations: {iteration} | consumed samples: {args.consumed_train_samples} | "
                    f"mean throughput (tokens/s/device): {tokens_per_s:.1f}")
    log.close()
    return _finish(args, summary)


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
    """Print a user error once, as one line: ``error: ...``, or ``[rank N] error: ...`` if only some ranks found it.

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
    print_rank_last(f"nothing to train: the checkpoint in {args.load} is at iteration {ckpt_iteration} and "
                    f"--train-iters is {args.train_iters}; it is left as it is (raise --train-iters above "
                    f"{ckpt_iteration} to train on)")
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

    from mindspeed_llm.training.checkpointing import last_complete_checkpoint
    from mindspeed_llm.training.initialize import get_args

    name = signal_module.Signals(signum).name + (" (Ctrl-C)" if signum == signal_module.SIGINT else "")
    try:
        args = get_args()
    except RuntimeError:
        return f"interrupted by {name} during start-up; nothing was written"
    where = f"during iteration {args.curr_iteration + 1}" if hasattr(args, "curr_iteration") else "before training"
    kept = last_complete_checkpoint(args.save)
    return (f"interrupted by {name} {where}; no temporary files left, kept: {kept}"
            + (f" (resume with --load {args.save})" if args.save and "iteration" in kept else ""))


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; user errors print one line and exit 1, a signal 128 + its number (130 for Ctrl-C)."""
    rank = launch_rank()[0]
    signals.install()
    try:
        main()
    except TrainingInterrupted as exc:
        _exit_interrupted(exc.signum, rank)
    except PeerFailed as exc:
        _wait_for_report(exc.messages)  # the failing rank prints; torchrun stops the group once one rank exits
        sys.exit(1)
    except (ArgumentError, CheckpointError, *USER_ERRORS) as exc:
        report_error(str(exc))
        sys.exit(1)
    except RuntimeError as exc:
        if signals.interrupted_by() is not None:  # a collective the signal broke on the way out
            _exit_interrupted(signals.interrupted_by(), rank)
        if any(text in str(exc) for text in _PEER_GONE):
            print_error(f"rank {rank} lost another rank mid-collective ({str(exc).splitlines()[0][:120]}): that "
                        "rank ended first, its own message says why")
            sys.exit(1)
        raise
    finally:
        signals.uninstall()


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
