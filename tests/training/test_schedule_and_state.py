"""The LR schedule as Megatron-LM core_v0.16.1 sets it up, and the run state a checkpoint carries."""

from __future__ import annotations

import argparse

import pytest
import torch

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.validate import validate_args
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, file_header, read_header
from mindspeed_llm.runtime.state import TrainState
from mindspeed_llm.training.training import get_scheduler

BASE = (
    "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --lr 1e-2 --min-lr 0 --swiglu "
    "--disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path d_text_document "
    "--micro-batch-size 1 --global-batch-size 4 --lr-decay-style linear"
)


def _lrs(flags: str, steps: int) -> list[float]:
    args = validate_args(parse_args((BASE + " " + flags).split()), 1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    scheduler = get_scheduler(optimizer, args)
    out = []
    for _ in range(steps):
        scheduler.step(increment=args.global_batch_size)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_warmup_fraction_is_not_truncated():
    # 10 iterations x 4 samples = 40 decay samples; 0.22 of them = 8.8 warm-up samples (int() made it 8).
    lrs = _lrs("--train-iters 10 --lr-warmup-fraction 0.22", 2)
    assert lrs[0] == pytest.approx(1e-2 * 4 / 8.8, rel=1e-12)
    assert lrs[1] == pytest.approx(1e-2 * 8 / 8.8, rel=1e-12)  # still warming up at 8 of 8.8 samples


def test_sample_based_schedule_uses_the_sample_flags():
    # --train-samples 40 with gbs 4: warm-up 6 samples, linear decay to 0 at sample 30.
    lrs = _lrs("--train-samples 40 --lr-warmup-samples 6 --lr-decay-samples 30", 4)
    assert lrs[0] == pytest.approx(1e-2 * 4 / 6)
    assert lrs[1] == pytest.approx(1e-2 * (1 - (8 - 6) / (30 - 6)))
    assert lrs[3] == pytest.approx(1e-2 * (1 - (16 - 6) / (30 - 6)))


def _restored(header: dict) -> TrainState:
    """The state a checkpoint file's header restores (its record, from ``args`` when it has none)."""
    return TrainState.from_progress(read_header(header, "f.pt").progress)


def test_converted_checkpoint_counts_its_iterations_as_consumed():
    """Megatron-LM: a checkpoint at iteration N without consumed samples has consumed N x global batch."""
    state = _restored({"iteration": 1, "args": argparse.Namespace()})
    state.count_older_checkpoint(argparse.Namespace(global_batch_size=8, eval_interval=1000, eval_iters=10))
    assert (state.iteration, state.consumed_train_samples, state.consumed_valid_samples) == (1, 8, 0)
    state = _restored(
        {
            "iteration": 30,
            "args": argparse.Namespace(consumed_train_samples=100, consumed_valid_samples=7),
            "num_floating_point_operations_so_far": 5.0,
        }
    )
    state.count_older_checkpoint(argparse.Namespace(global_batch_size=8, eval_interval=10, eval_iters=2))
    assert (state.consumed_train_samples, state.consumed_valid_samples) == (100, 7)
    assert state.floating_point_operations_so_far == 5.0


def test_checkpoint_fields_keep_megatron_places():
    state = TrainState(iteration=4, consumed_train_samples=16, consumed_valid_samples=2,
                       floating_point_operations_so_far=3.0)
    record = CheckpointRecord.from_megatron_args(argparse.Namespace()).replace(progress=state.progress())
    header = file_header(record)
    assert (header["iteration"], header["num_floating_point_operations_so_far"]) == (4, 3.0)
    assert (header["args"].consumed_train_samples, header["args"].consumed_valid_samples) == (16, 2)
    assert _restored(header) == state
