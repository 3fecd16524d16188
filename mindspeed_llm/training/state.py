"""Run state apart from configuration: the one object that says where a run is.

The configuration is frozen (``mindspeed_llm.config``: the run's namespace is derived and frozen from
birth). What changes while training (iteration, consumed samples, FLOPs, the random generators' states)
lives in :class:`TrainState`, which checkpoints save and restore. The checkpoint format stays
Megatron-LM's: ``iteration``, ``num_floating_point_operations_so_far``, ``rng_state`` at the top
level and the consumed samples inside ``args`` (see :func:`TrainState.checkpoint_fields`).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass


# ---- RNG ---------------------------------------------------------------------------------------------------------
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


# ---- run state ---------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a training run stands: what checkpoints save and a resumed run restores.

    The data position is the consumed sample counts: the sampler reads consecutive global batches
    from there, and the DataLoader's generator is seeded from ``--seed``.
    """

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    floating_point_operations_so_far: float = 0.0

    def checkpoint_fields(self, saved_args: argparse.Namespace) -> dict:
        """Top-level checkpoint entries; the consumed samples go into ``saved_args`` (Megatron-LM's place)."""
        saved_args.consumed_train_samples = self.consumed_train_samples
        saved_args.consumed_valid_samples = self.consumed_valid_samples
        return {"iteration": self.iteration,
                "num_floating_point_operations_so_far": self.floating_point_operations_so_far}

    def restore(self, checkpoint: dict) -> None:
        """Iteration, consumed samples and FLOPs from a loaded rank file."""
        ckpt_args = checkpoint.get("args")
        self.iteration = int(checkpoint.get("iteration", 0))
        self.consumed_train_samples = int(getattr(ckpt_args, "consumed_train_samples", 0) or 0)
        self.consumed_valid_samples = int(getattr(ckpt_args, "consumed_valid_samples", 0) or 0)
        self.floating_point_operations_so_far = float(checkpoint.get("num_floating_point_operations_so_far", 0.0))

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
