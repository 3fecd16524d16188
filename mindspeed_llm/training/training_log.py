"""Megatron-LM-style training logs: the per-interval line, validation block, memory report, TensorBoard."""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import torch

from mindspeed_llm.console import write_line


def print_rank_last(message: str) -> None:
    """Print on the last rank (where Megatron-LM prints training progress: it holds the loss)."""
    if torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
        write_line(message)  # one write: another rank's line cannot land between the text and its newline


def print_rank_0(message: str) -> None:
    """Print on global rank 0."""
    if torch.distributed.get_rank() == 0:
        write_line(message)


def num_floating_point_operations(args: argparse.Namespace, batch_size: int) -> float:
    """FLOPs of one training step (forward + backward = 3 x forward) of the dense GQA SwiGLU model.

    Per token and layer the forward pass does 2 FLOPs per weight of the QKV, output projection and
    the three SwiGLU matrices, plus causal attention (QK^T and AV over half the sequence on average);
    the output layer adds 2 x hidden x vocabulary.
    """
    h, s, layers = args.hidden_size, args.seq_length, args.num_layers
    q = args.num_attention_heads * args.kv_channels
    kv = 2 * args.num_query_groups * args.kv_channels
    weights = h * (q + kv) + q * h + 3 * h * args.ffn_hidden_size
    attention = 2 * q * s / 2  # QK^T and AV, causal
    per_token = 2 * (layers * (weights + attention) + h * args.padded_vocab_size)
    return 3.0 * per_token * batch_size * s


def memory_report(iteration: int) -> str:
    """``[Rank r] (after N iterations) memory (MB) | ...`` for this rank's device (RSS on the CPU)."""
    rank = torch.distributed.get_rank()
    if torch.cuda.is_available() and torch.cuda.memory_allocated() > 0:
        mb = 1024 * 1024
        return (
            f"[Rank {rank}] (after {iteration} iterations) memory (MB) | allocated: "
            f"{torch.cuda.memory_allocated() / mb:.1f} | max allocated: "
            f"{torch.cuda.max_memory_allocated() / mb:.1f} | reserved: "
            f"{torch.cuda.memory_reserved() / mb:.1f} | max reserved: "
            f"{torch.cuda.max_memory_reserved() / mb:.1f}"
        )
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        import psutil

        rss = psutil.Process().memory_info().rss / (1024 * 1024)
    except ImportError:
        rss = float("nan")
    return (
        f"[Rank {rank}] (after {iteration} iterations) memory (MB) | rss: {rss:.1f} | max rss: {max_rss:.1f}"
    )


class TrainingLogger:
    """Accumulates per-iteration numbers and prints Megatron's log line every ``--log-interval``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.writer = None
        if args.tensorboard_dir and torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=args.tensorboard_dir, max_queue=1000)
        self._reset()
        self.memory_reported = False
        self.total_time = 0.0
        self.total_iters = 0

    def _reset(self) -> None:
        self.loss_sum: dict[str, float] = {}
        self.no_tokens = 0  # iterations whose batch held no token to learn (no loss; not in the averages)
        self.iters = 0
        self.skipped = 0
        self.nan = 0
        self.elapsed = 0.0
        self.t0 = time.time()

    def step(self, state, loss: dict[str, float], lr: float, grad_norm: float | None,
             loss_scale: float, skipped: bool, elapsed: float, *, num_zeros: float | None = None,
             params_norm: float | None = None) -> None:
        """Record one iteration (``state``: the run's TrainState); print the line when it closes a log
        interval."""
        args = self.args
        iteration = state.iteration
        self.iters += 1
        self.elapsed += elapsed
        self.total_time += elapsed
        self.total_iters += 1
        self.skipped += int(skipped)
        if None in loss.values():
            self.no_tokens += 1
            loss = {}
        for key, value in loss.items():
            if math.isnan(value) or math.isinf(value):
                self.nan += 1
            self.loss_sum[key] = self.loss_sum.get(key, 0.0) + value
        if self.writer is not None and iteration % args.tensorboard_log_interval == 0:
            samples = state.consumed_train_samples
            self.writer.add_scalar("learning-rate", lr, iteration)
            self.writer.add_scalar("batch-size", args.global_batch_size, iteration)
            for key, value in loss.items():
                self.writer.add_scalar(key, value, iteration)
                self.writer.add_scalar(key + " vs samples", value, samples)
            if grad_norm is not None:
                self.writer.add_scalar("grad-norm", grad_norm, iteration)
            if num_zeros is not None:
                self.writer.add_scalar("num-zeros", num_zeros, iteration)
            if params_norm is not None:
                self.writer.add_scalar("params-norm", params_norm, iteration)
            self.writer.add_scalar("loss-scale", loss_scale, iteration)
        if iteration % args.log_interval:
            return
        per_iter = self.elapsed / self.iters
        tokens_per_s = args.global_batch_size * args.seq_length / per_iter / args.world_size
        tflops = (
            num_floating_point_operations(args, args.global_batch_size) / per_iter / args.world_size / 1e12
        )
        line = (f" [{time.strftime('%Y-%m-%d %H:%M:%S')}] iteration {iteration:8d}/{args.train_iters:8d} |"
                f" consumed samples: {state.consumed_train_samples:12d} |"
                f" elapsed time per iteration (ms): {per_iter * 1000:.1f} |")
        if args.log_throughput:
            line += f" throughput (tokens/s/device): {tokens_per_s:.1f} | TFLOP/s/device: {tflops:.3f} |"
        line += (f" learning rate: {lr:.6E} |"
                f" global batch size: {args.global_batch_size:5d} |")
        counted = max(self.iters - self.skipped - self.no_tokens, 1)
        for key, total in self.loss_sum.items():
            line += f" {key}: {total / counted:.6E} |"
        if self.no_tokens:
            line += f" iterations without a token to learn (no loss): {self.no_tokens:3d} |"
        line += f" loss scale: {loss_scale:.1f} |"
        if grad_norm is not None:
            line += f" grad norm: {grad_norm:.3f} |"
        if num_zeros is not None:
            line += f" num zeros: {int(num_zeros)} |"
        if params_norm is not None:
            line += f" params norm: {params_norm:.3f} |"
        line += (
            f" number of skipped iterations: {self.skipped:3d} | number of nan iterations: {self.nan:3d} |"
        )
        print_rank_last(line)
        if self.writer is not None:
            self.writer.add_scalar("throughput (tokens/s/device)", tokens_per_s, iteration)
            self.writer.add_scalar("TFLOP/s/device", tflops, iteration)
        if not self.memory_reported:
            self.memory_reported = True
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            if rank in (0, world - 1):
                write_line(memory_report(iteration))
        self._reset()

    def evaluation(self, label: str, losses: dict[str, float], iteration: int) -> None:
        """Megatron's validation block (loss and perplexity), and its TensorBoard scalars."""
        text = f" {label} |"
        for key, value in losses.items():
            ppl = math.exp(min(20.0, value))
            text += f" {key} value: {value:.6E} | {key} PPL: {ppl:.6E} |"
            if self.writer is not None:
                self.writer.add_scalar(f"{key} validation", value, iteration)
                self.writer.add_scalar(f"{key} validation ppl", ppl, iteration)
        bar = "-" * (len(text) + 1)
        print_rank_last(f"{bar}\n{text}\n{bar}")

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        sys.stdout.flush()


def moe_aux_losses(model: list, num_microbatches: int) -> dict[str, float]:
    """The MoE routers' losses of the last global batch, as Megatron-LM logs them apart from the lm loss.

    Each of megatron-core's tracked losses (``load_balancing_loss``, ``seq_load_balancing_loss``,
    ``z_loss``, ...; per layer, without its coefficient, summed over the micro-batches) is summed over the
    pipeline stages and the router's reduce group (TP x CP), averaged over the data-parallel ranks, the
    micro-batches and the MoE layers (Megatron-LM's ``track_moe_metrics``; its data-parallel average is an
    ``AVG`` reduction, which gloo lacks). The tracker is cleared for the next batch. Empty without MoE layers.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe.moe_utils import (
        clear_aux_losses_tracker,
        get_moe_layer_wise_logging_tracker,
    )
    from megatron.core.transformer.moe.router import Router

    routers = torch.tensor([sum(isinstance(m, Router) for chunk in model for m in chunk.modules())],
                           dtype=torch.float32)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(routers, group=ps.get_pipeline_model_parallel_group())
    if float(routers) == 0:
        return {}
    tracker = get_moe_layer_wise_logging_tracker()
    pp_group = ps.get_pipeline_model_parallel_group()
    if ps.get_pipeline_model_parallel_world_size() > 1:  # a stage without MoE layers tracks nothing
        names: list = [None] * ps.get_pipeline_model_parallel_world_size()
        torch.distributed.all_gather_object(names, {k: (len(v["values"]), v.get("reduce_group_has_dp", False))
                                                    for k, v in tracker.items()}, group=pp_group)
        for found in names:
            for name, (length, has_dp) in found.items():
                if name not in tracker:
                    tracker[name] = {"values": torch.zeros(length), "reduce_group": None, "avg_group": None,
                                     "reduce_group_has_dp": has_dp}
    dp_group = ps.get_data_parallel_group(with_context_parallel=False)
    out = {}
    for name in sorted(tracker):
        values = tracker[name]["values"].detach().float().clone()
        torch.distributed.all_reduce(values, group=pp_group)
        if tracker[name].get("reduce_group") is not None:
            torch.distributed.all_reduce(values, group=tracker[name]["reduce_group"])
            if not tracker[name].get("reduce_group_has_dp", False):
                torch.distributed.all_reduce(values, group=dp_group)
                values /= torch.distributed.get_world_size(group=dp_group)
        if tracker[name].get("avg_group") is not None:
            torch.distributed.all_reduce(values, group=tracker[name]["avg_group"])
            values /= torch.distributed.get_world_size(group=tracker[name]["avg_group"])
        out[name] = float(values.sum() / num_microbatches / routers)
    clear_aux_losses_tracker()
    return out

