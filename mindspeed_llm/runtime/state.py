"""Where a training run stands: :class:`TrainState` (iteration, consumed samples, FLOPs and the RNG states).

Checkpoints save and restore it through one interface (:mod:`mindspeed_llm.runtime.checkpoint`): the
counters are the record's ``progress`` (:meth:`TrainState.progress`), the RNG states Megatron-LM's
``rng_state`` entry. Resuming restores both, so a resumed run draws the same dropout masks as the
unbroken one.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field


def get_rng_state() -> dict:
    """Python, numpy, torch and megatron's model-parallel RNG tracker states of this rank.

    With the DataLoaders on their own generators (training/data.py), these are every generator a
    training step draws from: dropout outside the tracker's fork draws from the default (CUDA, on
    the CPU the CPU) generator, inside it from the tracker's states.
    """
    import numpy as np
    import torch
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
    import numpy as np
    import torch
    from megatron.core import tensor_parallel

    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    torch.cuda.set_rng_state(state["cuda_rng_state"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


@dataclass
class TrainState:
    """Where a training run stands: what checkpoints save and a resumed run restores.

    The data position is the consumed sample counts: the sampler reads consecutive global batches
    from there, and the DataLoader's generator is seeded from ``--seed``. ``rng`` is this rank's
    generator states as of the last :meth:`capture_rng` (a save) or load; None when a checkpoint
    held none (or the run saves without them).
    """

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    floating_point_operations_so_far: float = 0.0
    rng: dict | None = field(default=None, repr=False)

    def capture_rng(self) -> None:
        """Take this rank's generator states into :attr:`rng` (before a save)."""
        self.rng = get_rng_state()

    def restore_rng(self) -> bool:
        """Put :attr:`rng` back into the generators (after a load); False when there is none."""
        if self.rng is None:
            return False
        set_rng_state(self.rng)
        return True

    def progress(self):
        """The counters as the checkpoint record's ``progress``."""
        from mindspeed_llm.runtime.checkpoint.record import ProgressRecord

        return ProgressRecord(iteration=self.iteration, consumed_train_samples=self.consumed_train_samples,
                              consumed_valid_samples=self.consumed_valid_samples,
                              floating_point_operations_so_far=self.floating_point_operations_so_far)

    @classmethod
    def from_progress(cls, progress, rng: dict | None = None) -> TrainState:
        """The state a checkpoint record's ``progress`` (and this rank's RNG states) describe."""
        return cls(iteration=progress.iteration, consumed_train_samples=progress.consumed_train_samples,
                   consumed_valid_samples=progress.consumed_valid_samples,
                   floating_point_operations_so_far=progress.floating_point_operations_so_far, rng=rng)

    def count_older_checkpoint(self, args: argparse.Namespace) -> None:
        """Megatron-LM's rule for checkpoints without consumed samples (e.g. converted, iteration 1).

        It counts ``iteration x global batch`` training samples as consumed (and the validation
        samples of the evaluations those iterations ran), so the data continues after them.
        """
        if self.iteration > 0 and self.consumed_train_samples == 0:
            self.consumed_train_samples = self.iteration * args.global_batch_size
        if self.iteration > 0 and self.consumed_valid_samples == 0 and args.eval_interval:
            self.consumed_valid_samples = (self.iteration // args.eval_interval) * args.eval_iters * \
                args.global_batch_size
