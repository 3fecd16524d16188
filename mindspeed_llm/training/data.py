"""Training data: ``--data-path`` checks, ``GPTDataset`` through ``BlendedMegatronDatasetBuilder``, iterators.

Who builds the dataset index cache (document/sample/shuffle ``.npy`` files): global rank 0 while the
others wait, as in Megatron-LM; with ``--no-shared-storage`` the first process of every node builds
its own copy, because the other nodes cannot see rank 0's files.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from collections.abc import Iterator

import torch

from mindspeed_llm.training.arguments import check_data_prefix, split_data_path


# ---- --data-path ------------------------------------------------------------------------------------------------
def parse_blend(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """``[prefix]`` or ``[w1, p1, w2, p2, ...]`` -> (prefixes, weights or None), each prefix checked."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = split_data_path(data_path)
    for p in prefixes:
        check_data_prefix(p)
    if weights is None:
        return prefixes, None
    return get_blend_from_list([s for pair in zip(weights, prefixes) for s in pair])


# ---- datasets ---------------------------------------------------------------------------------------------------
def train_valid_test_num_samples(args: argparse.Namespace) -> list[int]:
    """Samples per split, as Megatron-LM computes them from the iteration counts."""
    train = args.train_iters * args.global_batch_size
    eval_iters = (args.train_iters // args.eval_interval + 1) * args.eval_iters if args.eval_interval else 0
    return [train, eval_iters * args.global_batch_size, args.eval_iters * args.global_batch_size]


def gpt_dataset_config(args: argparse.Namespace, tokenizer):
    """megatron-core ``GPTDatasetConfig`` for the flags."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=parse_blend(args.data_path),
        split=args.split,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=not args.no_mmap_bin_files,
        tokenizer=tokenizer,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=False,  # the model builds its causal mask
    )


@contextlib.contextmanager
def _as_single_process():
    """Let megatron-core's dataset code build and write its index cache as if it were alone.

    GPTDataset writes its cache only on global rank 0. A node leader without shared storage must
    write its own; inside this context ``torch.distributed.is_initialized()`` answers False, so no
    collective is entered and the cache is written here. Restored on exit.
    """
    original = torch.distributed.is_initialized
    torch.distributed.is_initialized = lambda: False
    try:
        yield
    finally:
        torch.distributed.is_initialized = original


def build_gpt_datasets(args: argparse.Namespace, tokenizer, num_samples: list[int] | None = None, dataset_cls=None):
    """(train, valid, test) ``GPTDataset`` (None for an empty split), built per the storage rule above."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    dataset_cls = dataset_cls or GPTDataset
    config = gpt_dataset_config(args, tokenizer)
    num_samples = num_samples or train_valid_test_num_samples(args)

    def build():
        return BlendedMegatronDatasetBuilder(dataset_cls, num_samples, lambda: True, config).build()

    if not torch.distributed.is_initialized():
        return build()
    rank = torch.distributed.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    builds_cache = local_rank == 0 if args.no_shared_storage else rank == 0
    if builds_cache:
        with _as_single_process():
            build()
    torch.distributed.barrier()
    return build()


# ---- iterators --------------------------------------------------------------------------------------------------
class PretrainingBatchSampler:
    """Megatron's pretraining sampler: consecutive global batches, this DP rank's micro-batch slice."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int) -> None:
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch_size * self.dp_size
        start = self.dp_rank * self.micro_batch_size
        for first in range(self.consumed_samples, self.total_samples - step + 1, step):
            yield list(range(first + start, first + start + self.micro_batch_size))


def _cyclic(loader) -> Iterator:
    while True:
        yield from loader


def build_data_iterator(dataset, consumed_samples: int, args: argparse.Namespace, *, cyclic: bool = False):
    """An iterator of this rank's micro-batches (dicts of tensors), starting after ``consumed_samples``."""
    if dataset is None:
        return None
    from megatron.core import parallel_state as ps

    sampler = PretrainingBatchSampler(len(dataset), consumed_samples % len(dataset) if cyclic else consumed_samples,
                                      args.micro_batch_size, ps.get_data_parallel_rank(),
                                      ps.get_data_parallel_world_size())
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                                         persistent_workers=args.num_workers > 0)
    return _cyclic(loader) if cyclic else iter(loader)


def take(iterator, n: int) -> list:
    """The next ``n`` items of ``iterator``."""
    return list(itertools.islice(iterator, n))
