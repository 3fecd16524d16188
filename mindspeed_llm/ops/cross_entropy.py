"""Vocab-parallel cross entropy that works through the logits a few rows at a time.

megatron-core's ``vocab_parallel_cross_entropy`` upcasts the whole ``[s, b, V/tp]`` logits tensor to
float32, then runs max, subtract, exp, sum, divide and scale as separate passes over it, keeps the
float32 softmax for backward and returns a float32 gradient that autograd casts back. With a
32k-152k vocabulary that tensor is hundreds of MB, so every pass is a trip to main memory: on a CPU
those passes cost as much as the output layer's matmul.

:func:`chunked_vocab_parallel_cross_entropy` computes the same function (float32 math, the same
tensor-parallel all-reduces: MAX of the row maxima, SUM of the target logits and of the exp sums)
over blocks of rows small enough to stay in cache. It keeps the input logits (no copy) and one
float32 log-sum-exp per token for backward, and writes the gradient once, in the logits' dtype.
Label smoothing goes to megatron's implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bytes of float32 work per block: small enough for a core's L2 cache, large enough that the
# per-op overhead of a Python loop (a few microseconds per op) stays small next to the math.
_BLOCK_BYTES = 1 << 20


def _rows_per_block(vocab_per_rank: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * vocab_per_rank))


def _tp_info() -> tuple[object | None, int, int]:
    """(group, rank, world size) of tensor parallelism; (None, 0, 1) when megatron's is not set up."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None, 0, 1
    return (parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_tensor_model_parallel_world_size())


class _ChunkedVocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        group, rank, world = _tp_info()
        vocab = logits.size(-1)
        start = rank * vocab
        rows = logits.reshape(-1, vocab)
        flat_target = target.reshape(-1)
        n = rows.size(0)
        local = (flat_target >= start) & (flat_target < start + vocab)
        local_target = torch.where(local, flat_target - start, torch.zeros_like(flat_target))

        row_max = torch.empty(n, dtype=torch.float32, device=logits.device)
        exp_sum = torch.empty(n, dtype=torch.float32, device=logits.device)
        step = _rows_per_block(vocab)
        for lo in range(0, n, step):
            block = rows[lo:lo + step]
            if block.dtype != torch.float32:
                block = block.float()  # a copy we own: upcast once, then work in place
                block_max = block.amax(dim=-1, keepdim=True)
                shifted = block.sub_(block_max)
            else:  # float32 logits: the first op writes a new tensor, the logits stay intact
                block_max = block.amax(dim=-1, keepdim=True)
                shifted = torch.sub(block, block_max)
            row_max[lo:lo + step] = block_max.squeeze(-1)
            exp_sum[lo:lo + step] = shifted.exp_().sum(dim=-1)
        target_logit = rows.gather(1, local_target.unsqueeze(1)).squeeze(1).float()
        target_logit.masked_fill_(~local, 0.0)

        if world > 1:
            global_max = row_max.clone()
            torch.distributed.all_reduce(global_max, op=torch.distributed.ReduceOp.MAX, group=group)
            exp_sum.mul_(torch.exp(row_max - global_max))
            torch.distributed.all_reduce(exp_sum, op=torch.distributed.ReduceOp.SUM, group=group)
            torch.distributed.all_reduce(target_logit, op=torch.distributed.ReduceOp.SUM, group=group)
            row_max = global_max
        log_sum_exp = row_max + torch.log(exp_sum)
        loss = log_sum_exp - target_logit

        ctx.save_for_backward(logits, log_sum_exp, local_target, local)
        return loss.view_as(target)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        logits, log_sum_exp, local_target, local = ctx.saved_tensors
        vocab = logits.size(-1)
        rows = logits.reshape(-1, vocab)
        grad = torch.empty_like(rows)
        scale = grad_output.reshape(-1, 1).float()
        target_scale = -(scale * local.unsqueeze(1))
        # d loss / d logit = (softmax - one_hot(target)) * the incoming gradient of the row.
        step = _rows_per_block(vocab)
        for lo in range(0, rows.size(0), step):
            block, lse = rows[lo:lo + step], log_sum_exp[lo:lo + step].unsqueeze(1)
            # float32: computed straight into the gradient; otherwise in a float32 copy, cast once at the end.
            probs = torch.sub(block, lse, out=grad[lo:lo + step]) if block.dtype == torch.float32 \
                else block.float().sub_(lse)
            probs.exp_().mul_(scale[lo:lo + step])
            probs.scatter_add_(1, local_target[lo:lo + step].unsqueeze(1), target_scale[lo:lo + step])
            if probs.dtype != grad.dtype:
                grad[lo:lo + step].copy_(probs)
        return grad.view_as(logits), None


def chunked_vocab_parallel_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-token ``log_softmax`` loss of ``logits`` ``[..., V/tp]`` (this rank's vocabulary slice) at
    ``target`` ``[...]``, in float32, without materialising a float32 copy of the logits."""
    if not logits.is_contiguous():
        logits = logits.contiguous()
    return _ChunkedVocabParallelCrossEntropy.apply(logits, target)


def vocab_parallel_cross_entropy(vocab_parallel_logits: Tensor, target: Tensor, label_smoothing: float = 0.0,
                                 *, megatron_impl=None) -> Tensor:
    """megatron's ``tensor_parallel.vocab_parallel_cross_entropy`` signature; blocked unless label
    smoothing."""
    if label_smoothing > 0:
        if megatron_impl is None:
            from megatron.core.tensor_parallel.cross_entropy import _VocabParallelCrossEntropy

            return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing)
        return megatron_impl(vocab_parallel_logits, target, label_smoothing)
    return chunked_vocab_parallel_cross_entropy(vocab_parallel_logits, target)
