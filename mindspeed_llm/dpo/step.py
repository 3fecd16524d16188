"""The forward step of ``posttrain_gpt.py --stage dpo|simpo|orpo``: pairs through the policy and the
reference, in one micro-batch.

A micro-batch of ``b`` pairs is ``2b`` sequences (chosen, then rejected: :mod:`mindspeed_llm.dpo.data`). The
policy runs them with gradients; the reference (:mod:`mindspeed_llm.dpo.reference`) runs the same rows
under ``no_grad``, on the same TP/PP/CP layout. Between pipeline stages the two travel as one activation,
``[s, 2b + 2b, h]`` (policy rows first); the reference's half gets no gradient. The last stage turns
megatron's per-token cross entropy into per-sequence log-probabilities (summed over the learned tokens; with
context parallelism summed over the CP ranks, each rank's gradient flowing to its own tokens), and
:mod:`mindspeed_llm.dpo.loss` into the loss: the mean over the micro-batch's pairs, which megatron-core's
schedule averages over the micro-batches and DDP over the data-parallel ranks (the global batch's mean,
TRL's ``DPOTrainer`` at one batch).

Logged per interval (means over the global batch): ``loss``, ``rewards/{chosen,rejected,accuracies,margins}``
and ``logps/{chosen,rejected}``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from mindspeed_llm.dpo.config import DpoConfig
from mindspeed_llm.dpo.loss import pair_metrics, preference_losses
from mindspeed_llm.dpo.reference import Reference, build_reference, unwrap


class _SumOverContextParallel(torch.autograd.Function):
    """Forward: the sum over the CP ranks; backward: the gradient as is (each rank's tokens are its own)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sequence_logps(
    token_losses: torch.Tensor, loss_mask: torch.Tensor, cp_group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each row's learned tokens, their count) from per-token losses ``[rows, s]``."""
    logps = -(token_losses.float() * loss_mask).sum(dim=1)
    counts = loss_mask.sum(dim=1)
    if cp_group is not None:
        logps = _SumOverContextParallel.apply(logps, cp_group)
        counts = counts.clone()
        torch.distributed.all_reduce(counts, group=cp_group)
    return logps, counts


def pair_loss(
    cfg: DpoConfig,
    token_losses: torch.Tensor,
    loss_mask: torch.Tensor,
    reference_losses: torch.Tensor | None,
    cp_group=None,
):
    """The micro-batch's loss (mean over its pairs) and its metrics as ``[sum, pairs]`` for the log."""
    logps, counts = sequence_logps(token_losses, loss_mask, cp_group)
    ref = None
    if reference_losses is not None:
        ref = sequence_logps(reference_losses, loss_mask, cp_group)[0]
    sums, ref_sums = logps, ref
    chosen_sum = logps.chunk(2)[0]
    chosen_count = counts.chunk(2)[0].clamp(min=1)
    if cfg.averages_logps:
        logps = logps / counts.clamp(min=1)
        ref = None if ref is None else ref / counts.clamp(min=1)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = (None, None) if ref is None else ref.chunk(2)
    losses, chosen_rewards, rejected_rewards = preference_losses(
        cfg, chosen, rejected, ref_chosen, ref_rejected, chosen_sum / chosen_count
    )
    if cfg.needs_reference and cfg.averages_logps:
        # IPO's loss compares token means; its rewards and logged log-probabilities are the sums (TRL's).
        chosen, rejected = sums.detach().chunk(2)
        chosen_rewards = cfg.beta * (chosen - ref_sums.chunk(2)[0])
        rejected_rewards = cfg.beta * (rejected - ref_sums.chunk(2)[1])
    pairs = torch.tensor(float(losses.numel()), device=losses.device)
    report = {"loss": torch.stack([losses.detach().sum(), pairs])}
    for key, values in pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected).items():
        report[key] = torch.stack([values.float().sum(), pairs])
    return losses.mean(), report


class PreferenceStep:
    """``forward_step`` of the preference stages, with the run's reference (built by :meth:`prepare`)."""

    def __init__(self, cfg: DpoConfig, model_provider: Callable, get_batch: Callable) -> None:
        self.cfg = cfg
        self.model_provider = model_provider
        self.get_batch = (
            get_batch  # (data_iterator) -> tokens, labels, loss_mask, position_ids (None: middle)
        )
        self.reference: Reference | None = None

    def prepare(self, model: list, state, args) -> None:
        """Build the reference once the policy's starting weights are loaded (every rank)."""
        from mindspeed_llm.training.training_log import print_rank_0

        self.reference = build_reference(model, self.model_provider, args, self.cfg, state.iteration)
        what = self.reference.source if self.reference is not None else "none (reference-free)"
        print_rank_0(f"> {self.cfg.loss_type} preference loss, beta {self.cfg.beta}; reference model: {what}")

    def __call__(self, data_iterator, model):
        from megatron.core import parallel_state as ps

        tokens, labels, loss_mask, position_ids = self.get_batch(data_iterator)
        gpt = unwrap(model)
        received = gpt.decoder.input_tensor  # None on the first stage
        policy_in, reference_in = received, None
        if received is not None and self.reference is not None:
            policy_in, reference_in = received.chunk(2, dim=1)
        reference_out = None
        if self.reference is not None:
            reference_out = self.reference.forward(
                model, 0, tokens, position_ids, None, labels=labels, input_tensor=reference_in
            )
        if received is not None:
            gpt.decoder.set_input_tensor(policy_in)
        output = model(tokens, position_ids, None, labels=labels)
        if not ps.is_pipeline_last_stage():
            if reference_out is not None:
                output = torch.cat([output, reference_out], dim=1)
            return output, None
        cp_group = ps.get_context_parallel_group() if ps.get_context_parallel_world_size() > 1 else None
        return output, partial(
            pair_loss,
            self.cfg,
            loss_mask=loss_mask.float(),
            reference_losses=reference_out,
            cp_group=cp_group,
        )
