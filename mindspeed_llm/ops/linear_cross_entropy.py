"""The output layer and the cross entropy in one pass over blocks of tokens (``--loss-compute-mode chunk``).

The unfused path writes the ``[tokens, V/tp]`` logits, keeps them (float32 on the CPU) until backward, and
in backward writes a gradient of the same size before the output layer's two products read it.
:func:`linear_cross_entropy` instead takes the hidden states and the output weight and, for each block of
``chunk`` tokens:

1. the block's logits ``h W^T`` (this rank's vocabulary slice), their row maxima, the sum of ``exp(l - max)``
   and the target's logit, all-reduced over tensor parallelism as megatron's
   ``vocab_parallel_cross_entropy`` does (MAX of the maxima, SUM of the rescaled sums and of the target
   logits): the loss ``log_sum_exp - target_logit``, float32;
2. when gradients are wanted, in the same buffer, ``D = softmax - one_hot(target)`` and the hidden
   states' gradient ``D W`` for a loss weight of 1 per token. Backward scales its rows by the incoming
   per-token gradient (the loss mask and 1/tokens of the loss function), which is exact algebra:
   ``d loss_t / d h_t = c_t (softmax_t - one_hot_t) W``.

What is kept for backward: the ``[tokens, hidden]`` gradient and, only when the output weight trains
(pretraining; not LoRA, where it is frozen), ``D`` in the logits' dtype, so that the weight's gradient
``D^T (c h)`` is one product in backward (the memory of the unfused logits, one pass fewer over them).
A frozen weight keeps nothing of size ``[tokens, V]``.

The numbers are those of the unfused path up to float32 rounding (the row scaling is applied after the
product instead of before it; ``exp(l - max) / sum`` instead of ``exp(l - log_sum_exp)``):
tests/ops/test_linear_cross_entropy.py holds it to megatron-core's own ``vocab_parallel_cross_entropy``
(after ``F.linear``) and to transformers' loss within a relative 1e-5 (loss, hidden-state and weight
gradients), at TP1 and at TP2 (vocabulary split, a padded vocabulary, a loss mask, targets outside the
vocabulary such as -100).

Nothing here imports megatron's training code; the patch (``patches/features.py``) decides when the
model's postprocess takes this path.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, chunk: int, group, rank: int,
                world: int) -> Tensor:
        n = hidden.size(0)
        vocab = weight.size(0)
        start = rank * vocab
        local = (target >= start) & (target < start + vocab)
        local_target = torch.where(local, target - start, torch.zeros_like(target)).unsqueeze(1)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grads = want_hidden or want_weight
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        probs = torch.empty(n, vocab, dtype=hidden.dtype, device=hidden.device) if want_weight else None
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            logits = torch.mm(hidden[lo:hi], weight.t())
            work = logits if logits.dtype == torch.float32 else logits.float()
            row_max = work.amax(dim=1)
            target_logit = work.gather(1, local_target[lo:hi]).squeeze(1).masked_fill_(~local[lo:hi], 0.0)
            exp = work.sub_(row_max.unsqueeze(1)).exp_()
            exp_sum = exp.sum(dim=1)
            if world > 1:
                global_max = row_max.clone()
                torch.distributed.all_reduce(global_max, op=torch.distributed.ReduceOp.MAX, group=group)
                exp_sum.mul_(torch.exp(row_max - global_max))
                sums = torch.stack([exp_sum, target_logit])
                torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
                exp_sum, target_logit = sums[0], sums[1]
                # this rank's exp(l - local max) -> exp(l - global max)
                row_scale = torch.exp(row_max - global_max).div_(exp_sum)
                row_max = global_max
            else:
                row_scale = exp_sum.reciprocal()
            loss[lo:hi] = row_max + torch.log(exp_sum) - target_logit
            if not grads:
                continue
            d = exp.mul_(row_scale.unsqueeze(1))  # softmax over the whole vocabulary
            d.scatter_add_(1, local_target[lo:hi], -local[lo:hi].to(d.dtype).unsqueeze(1))
            if d.dtype != hidden.dtype:
                d = d.to(hidden.dtype)
            if want_hidden:
                torch.mm(d, weight, out=grad_hidden[lo:hi])
            if want_weight:
                probs[lo:hi] = d
        ctx.save_for_backward(grad_hidden, probs, hidden if want_weight else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, probs, hidden = ctx.saved_tensors
        scale = grad_loss.unsqueeze(1)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = grad_hidden * scale.to(grad_hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(probs.t(), hidden * scale.to(hidden.dtype))
        return grad_h, grad_w, None, None, None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, chunk: int = 1024,
                         group=None, rank: int = 0, world: int = 1) -> Tensor:
    """Per-token cross entropy of the logits ``hidden @ weight.T`` at ``target``, float32, shaped like
    ``target``, computed ``chunk`` tokens at a time without keeping the logits.

    ``hidden`` ``[..., h]`` (the output layer's input, already entered into the TP region), ``weight``
    ``[V/tp, h]`` (this rank's vocabulary rows: rank ``rank`` of ``world`` in ``group``), ``target``
    ``[...]`` (token ids; ids outside the vocabulary, such as -100, count a target logit of 0, as in
    megatron, and are expected to be masked by the loss function).
    """
    if chunk < 1:
        raise ValueError(f"--loss-chunk-size must be a positive number of tokens, got {chunk}")
    flat = hidden.reshape(-1, hidden.size(-1))
    if not flat.is_contiguous():
        flat = flat.contiguous()
    loss = _LinearCrossEntropy.apply(flat, weight, target.reshape(-1), chunk, group, rank, world)
    return loss.view(target.shape)
