"""What the trainer saves and loads: model chunks, optimizer, scheduler and :class:`TrainState` (RNG
included).

The files, their formats and the checks of a launch against them are the runtime's
(:mod:`mindspeed_llm.runtime.checkpoint`): ``--ckpt-format`` picks what a save writes (``torch``,
Megatron's legacy layout, or ``torch_dist``); a load reads whichever format the folder holds (as
Megatron-LM does), so either format resumes and a Megatron-LM checkpoint loads. The run's state is
saved where Megatron-LM keeps it: ``iteration`` and the FLOP count at the top of the files, the
consumed samples inside ``args`` (so a resumed run reads the data from where the saved one stopped),
the RNG states as ``rng_state``, and all of it in the checkpoint record.
"""

from __future__ import annotations

import argparse

import torch

from mindspeed_llm.runtime import checkpoint
from mindspeed_llm.runtime.checkpoint.locate import last_complete_checkpoint
from mindspeed_llm.runtime.checkpoint.weights import unwrap
from mindspeed_llm.runtime.errors import NonFiniteError, fail_together
from mindspeed_llm.runtime.state import TrainState


def check_weights_finite(model: list, iteration: int, save: str) -> None:
    """Before saving: NonFiniteError on every rank when a weight of any rank holds NaN/Inf (collective)."""
    bad = None
    for i, chunk in enumerate(model):
        for name, param in unwrap(chunk).named_parameters():
            if not torch.isfinite(param.detach()).all():
                bad = f"{name}" + (f" (model chunk {i})" if len(model) > 1 else "")
                break
        if bad:
            break
    with fail_together():
        if bad:
            raise NonFiniteError(
                f"refusing to save iteration {iteration} into {save}: weight {bad} holds NaN/Inf "
                f"on rank {torch.distributed.get_rank()}; kept: {last_complete_checkpoint(save)}"
            )


def save_checkpoint(state: TrainState, model: list, optimizer, scheduler, args: argparse.Namespace) -> None:
    """Save the run at ``state.iteration`` under ``--save`` in ``--ckpt-format`` (collective: every rank calls
    it).

    Never saves NaN/Inf weights (NonFiniteError). The RNG states are taken into ``state`` now (none with
    ``--no-save-rng``). A failed write, or a signal, removes this save's temporary files and leaves the
    tracker naming the previous checkpoint.
    """
    check_weights_finite(model, state.iteration, args.save)
    if args.no_save_rng:
        state.rng = None
    else:
        state.capture_rng()
    checkpoint.save(state, model, optimizer, scheduler, args)


def load_checkpoint(model: list, optimizer, scheduler, args: argparse.Namespace,
                    iteration: int | str | None) -> TrainState:
    """Load ``--load`` into the model (strict), optimizer, scheduler and RNG; returns the run's state.

    ``--finetune`` (and ``release`` checkpoints) load weights only and start at iteration 0. Otherwise
    training continues after the saved iteration, as Megatron-LM does: a converted checkpoint
    (iteration 1, weights only) continues at iteration 2 and needs ``--no-load-optim`` (its optimizer
    starts fresh), which MindSpeed-LLM's example scripts pass.
    """
    return checkpoint.load(model, optimizer, scheduler, args, iteration)
