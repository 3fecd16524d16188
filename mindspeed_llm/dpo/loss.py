"""The preference losses on per-sequence log-probabilities, and the metrics a DPO run logs.

Every function works on one batch of pairs: ``chosen`` / ``rejected`` are the policy's log-probabilities of
the two answers (a sum over the answer's tokens, or their mean where :attr:`DpoConfig.averages_logps`), and
``ref_chosen`` / ``ref_rejected`` the reference model's (DPO's losses only). Formulas:

- sigmoid (DPO, Rafailov et al. 2023; cDPO's label smoothing eps):
  ``-(1 - eps) log s(beta d) - eps log s(-beta d)``,
  ``d = (chosen - ref_chosen) - (rejected - ref_rejected)``;
- hinge (SLiC): ``relu(1 - beta d)``;
- ipo (Azar et al. 2023, eq. 17, on token-mean log-probabilities): ``(d - 1 / (2 beta))^2``;
- simpo (Meng et al. 2024, token-mean, no reference): ``-log s(beta (chosen - rejected) - gamma)`` (cDPO's
  smoothing as above);
- orpo (Hong et al. 2024, token-mean, no reference): ``-beta log s(log odds(chosen) - log odds(rejected))``
  plus the SFT loss of the chosen answer, ``log odds(p) = logp - log(1 - exp(logp))``.

``--pref-ftx`` adds ``pref_ftx`` times the chosen answer's mean token loss. Rewards are ``beta`` times the
policy-over-reference log ratios (DPO; for IPO of the summed log-probabilities, as TRL logs them) or ``beta``
times the policy's token-mean log-probabilities (SimPO, ORPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mindspeed_llm.dpo.config import DpoConfig

# The per-pair metrics of one micro-batch, in the order :func:`pair_metrics` returns them.
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far below it."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def preference_losses(
    cfg: DpoConfig,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    chosen_token_mean: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) of ``cfg.loss_type``.

    ``chosen_token_mean``: the policy's mean log-probability per chosen-answer token (the SFT term's).
    """
    beta, eps = cfg.beta, cfg.label_smoothing
    if cfg.needs_reference:
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        d = chosen_ratio - rejected_ratio
        if cfg.loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
        elif cfg.loss_type == "hinge":
            losses = torch.relu(1 - beta * d)
        else:  # ipo
            losses = (d - 1 / (2 * beta)) ** 2
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    elif cfg.loss_type == "simpo":
        z = beta * (chosen - rejected) - cfg.simpo_gamma
        losses = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
    else:  # orpo
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        losses = -chosen_token_mean - beta * F.logsigmoid(log_odds)
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
    if cfg.pref_ftx:
        losses = losses - cfg.pref_ftx * chosen_token_mean
    return losses, chosen_rewards, rejected_rewards


def pair_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per pair: the rewards, whether the chosen one wins, the margin, and both log-probabilities."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }
