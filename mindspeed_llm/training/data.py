"""Training data: ``--data-path`` checks, ``GPTDataset`` through ``BlendedMegatronDatasetBuilder``, iterators.

Where data is read, as in Megatron-LM: only tensor-parallel rank 0 of the first and the last
pipeline stage builds the datasets and reads batches (:func:`dataset_built_on_this_rank`); it
broadcasts each micro-batch to the other TP ranks (:func:`broadcast_batch`), and middle stages read
nothing.

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

from mindspeed_llm.config.paths import check_data_prefix, split_data_path
from mindspeed_llm.runtime.errors import DataError, fail_together


# ---- --data-path -------------------------------------------------------------------------------------------
def parse_blend(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """``[prefix]`` or ``[w1, p1, w2, p2, ...]`` -> (prefixes, weights or None), each prefix checked."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = split_data_path(data_path)
    for p in prefixes:
        check_data_prefix(p)
    if weights is None:
        return prefixes, None
    return get_blend_from_list([s for pair in zip(weights, prefixes) for s in pair])


# ---- what the files hold -----------------------------------------------------------------------------------
REBUILD_HINT = "re-run preprocess_data.py to write the .bin and .idx together"
# Scan every token at start-up up to this many bytes of .bin in total (measured: ~10 GB/s from the page
# cache, 2-3 times that of a fast disk); bigger corpora are checked batch by batch as training reads them.
TOKEN_SCAN_LIMIT_BYTES = 4 << 30
_SCAN_CHUNK = 1 << 24  # tokens per numpy max() call: a few MB, cache-sized


def _index_reader(prefix: str):
    """megatron-core's reader of ``prefix.idx``; DataError when the file is damaged."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    try:
        return _IndexReader(prefix + ".idx", multimodal=False)
    except Exception as exc:  # noqa: BLE001 - a cut or foreign file fails in assert, struct, numpy or the dtype table
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DataError(
            f"{prefix}.idx is damaged or not a megatron index ({reason}): {REBUILD_HINT}"
        ) from None


def check_indexed_dataset(prefix: str) -> int:
    """DataError unless ``prefix.idx`` reads and ``prefix.bin`` has the size it describes; returns the tokens.

    O(1) in the size of the data: the header, the last document's pointer and length, the .bin's size.
    """
    if os.path.getsize(prefix + ".idx") == 0:
        raise DataError(f"{prefix}.idx is empty (0 bytes): {REBUILD_HINT}")
    index = _index_reader(prefix)
    count = len(index.sequence_lengths)
    bin_size = os.path.getsize(prefix + ".bin")
    if count == 0:
        raise DataError(f"{prefix}.bin/.idx hold no documents (0 tokens): preprocess a corpus that has text "
                        "(check --json-keys and that the column is not empty), or drop it from --data-path")
    expected = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * index.dtype_size
    if expected != bin_size:
        raise DataError(
            f"{prefix}.bin has {bin_size} bytes but {prefix}.idx describes {expected} "
            f"({count} documents of {index.dtype.__name__}): the two files come from different runs or "
            f"one was cut short; {REBUILD_HINT}"
        )
    tokens = expected // index.dtype_size
    if tokens == 0:
        raise DataError(
            f"{prefix}.bin/.idx hold {count} documents but 0 tokens: preprocess a corpus that has "
            "text, or drop it from --data-path"
        )
    return tokens


def largest_token_id(prefix: str) -> int:
    """The largest id in ``prefix.bin`` (a chunked max over the memory-mapped file)."""
    import numpy as np

    index = _index_reader(prefix)
    data = np.memmap(prefix + ".bin", dtype=index.dtype, mode="r")
    largest = -1
    for start in range(0, len(data), _SCAN_CHUNK):
        largest = max(largest, int(data[start:start + _SCAN_CHUNK].max()))
    del data
    return largest


def _too_large_id_error(prefix: str, largest: int, vocab: int) -> DataError:
    return DataError(
        f"{prefix}.bin holds token id {largest}, but the model's vocabulary (padded) has {vocab} "
        f"rows (ids 0..{vocab - 1}): the data was tokenized with another tokenizer; re-run "
        "preprocess_data.py with this model's --tokenizer-name-or-path"
    )


def check_token_ids(prefixes: list[str], vocab: int, limit_bytes: int = TOKEN_SCAN_LIMIT_BYTES) -> bool:
    """DataError naming the file when a .bin holds ids >= ``vocab``; False (not scanned) above
    ``limit_bytes``."""
    if sum(os.path.getsize(p + ".bin") for p in set(prefixes)) > limit_bytes:
        return False
    for prefix in dict.fromkeys(prefixes):
        largest = largest_token_id(prefix)
        if largest >= vocab:
            raise _too_large_id_error(prefix, largest, vocab)
    return True


def checked_batches(iterator: Iterator[dict], vocab: int, prefixes: list[str]) -> Iterator[dict]:
    """Micro-batches of ``iterator``; a token id >= ``vocab`` (which the embedding cannot look up) is a
    DataError."""
    for batch in iterator:
        tokens = batch.get("tokens") if isinstance(batch, dict) else None
        if tokens is not None and tokens.numel() and int(tokens.max()) >= vocab:
            for prefix in dict.fromkeys(prefixes):  # name the file (a scan, only now that one is known bad)
                largest = largest_token_id(prefix)
                if largest >= vocab:
                    raise _too_large_id_error(prefix, largest, vocab)
            raise DataError(
                f"a training batch holds token id {int(tokens.max())}, but the model's vocabulary "
                f"(padded) has {vocab} rows: re-run preprocess_data.py with this model's tokenizer"
            )
        yield batch


# ---- data sources ------------------------------------------------------------------------------------------
def _split_blends(args: argparse.Namespace) -> list | None:
    """``blend_per_split`` of --train-data-path/--valid-data-path/--test-data-path (None without them)."""
    paths = [args.train_data_path, args.valid_data_path, args.test_data_path]
    if not any(paths):
        return None
    return [parse_blend(p) if p else None for p in paths]


def data_prefixes(args: argparse.Namespace) -> list[str]:
    """Every prefix the launch reads (--data-path or the per-split paths; none with --mock-data).

    Instruction data (``--is-instruction-dataset``): the three datasets of the one ``--data-path`` prefix.
    """
    if getattr(args, "is_instruction_dataset", False):
        from mindspeed_llm.training.instruction_data import instruction_paths

        return list(instruction_paths(split_data_path(args.data_path)[0][0]).values())
    if getattr(args, "is_pairwise_dataset", False):  # --stage dpo: the four pairwise datasets
        from mindspeed_llm.data.pairwise import pairwise_prefixes

        return list(pairwise_prefixes(split_data_path(args.data_path)[0][0]).values())
    found = parse_blend(args.data_path)[0] if args.data_path else []
    for blend in _split_blends(args) or []:
        found += blend[0] if blend else []
    return found


def check_data_sources(args: argparse.Namespace) -> None:
    """Check every data prefix now (a wrong path fails before the model is built)."""
    if getattr(args, "is_instruction_dataset", False):
        from mindspeed_llm.config.paths import check_instruction_prefix

        check_instruction_prefix(split_data_path(args.data_path)[0][0])
        return
    if getattr(args, "is_pairwise_dataset", False):
        return  # config.paths checked the four datasets (check_command_line), the trainer reads them
    if args.data_path:
        parse_blend(args.data_path)
    _split_blends(args)


# ---- datasets ----------------------------------------------------------------------------------------------
def train_valid_test_num_samples(args: argparse.Namespace) -> list[int]:
    """Samples per split, as Megatron-LM computes them from the iteration (or sample) counts."""
    train = (
        args.train_samples if args.train_samples is not None else args.train_iters * args.global_batch_size
    )
    eval_iters = (args.train_iters // args.eval_interval + 1) * args.eval_iters if args.eval_interval else 0
    return [train, eval_iters * args.global_batch_size, args.eval_iters * args.global_batch_size]


def gpt_dataset_config(args: argparse.Namespace, tokenizer):
    """megatron-core ``GPTDatasetConfig`` for the flags."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=parse_blend(args.data_path) if args.data_path else None,
        blend_per_split=_split_blends(args),
        split=None if _split_blends(args) else args.split,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=not args.no_mmap_bin_files,
        tokenizer=tokenizer,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=False,  # the model builds its causal mask
    )


def _as_single_process() -> contextlib.AbstractContextManager:
    """Let megatron-core's dataset code build and write its index cache as if it were alone.

    GPTDataset writes its cache only on global rank 0. A node leader without shared storage must
    write its own: the registered scoped patch of :mod:`mindspeed_llm.patches.single_process`.
    """
    from mindspeed_llm.patches.single_process import as_single_process

    return as_single_process()


def dataset_built_on_this_rank(every_stage: bool = False) -> bool:
    """Megatron-LM's rule: TP rank 0 of the first or the last pipeline stage reads the data.

    ``every_stage`` (packed instruction data with --reset-attention-mask): middle stages read too, because
    their attention needs the document boundaries of each micro-batch.
    """
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return True
    stage_reads = (every_stage or ps.is_pipeline_first_stage(ignore_virtual=True)
                   or ps.is_pipeline_last_stage(ignore_virtual=True))
    return stage_reads and ps.get_tensor_model_parallel_rank() == 0


def _instruction_datasets(args: argparse.Namespace, tokenizer, num_samples: list[int]) -> list:
    """The instruction datasets; global rank 0 scans the token ids first, and the ranks fail together."""
    from mindspeed_llm.training.instruction_data import build_instruction_datasets

    vocab = getattr(args, "padded_vocab_size", None)
    first = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    guard = fail_together() if torch.distributed.is_initialized() else contextlib.nullcontext()
    with guard:
        if first and vocab:
            check_token_ids(data_prefixes(args)[:1], vocab)  # input_ids (labels hold the same ids or -100)
        return build_instruction_datasets(args, tokenizer, num_samples,
                                          dataset_built_on_this_rank(every_stage=args.reset_attention_mask))


def build_gpt_datasets(
    args: argparse.Namespace, tokenizer, num_samples: list[int] | None = None, dataset_cls=None
):
    """(train, valid, test) ``GPTDataset`` (None for an empty split and on ranks that read no data).

    ``--mock-data``: megatron-core's ``MockGPTDataset`` (synthetic documents, no files).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    if getattr(args, "is_instruction_dataset", False) and dataset_cls is None:
        return _instruction_datasets(args, tokenizer, num_samples or train_valid_test_num_samples(args))
    dataset_cls = dataset_cls or (MockGPTDataset if args.mock_data else GPTDataset)
    config = gpt_dataset_config(args, tokenizer)
    num_samples = num_samples or train_valid_test_num_samples(args)

    def build():
        return BlendedMegatronDatasetBuilder(
            dataset_cls, num_samples, dataset_built_on_this_rank, config
        ).build()

    vocab = getattr(args, "padded_vocab_size", None)
    prefixes = data_prefixes(args)
    if not torch.distributed.is_initialized():
        if vocab:
            check_token_ids(prefixes, vocab)
        return build()
    rank = torch.distributed.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    builds_cache = local_rank == 0 if args.no_shared_storage else rank == 0
    with fail_together():  # the others wait here while the builder scans the ids and writes the cache
        if builds_cache and not args.mock_data:
            if vocab:
                check_token_ids(prefixes, vocab)
            with _as_single_process():
                build()
    return build()


# ---- iterators ---------------------------------------------------------------------------------------------
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

    sampler = PretrainingBatchSampler(
        len(dataset),
        consumed_samples % len(dataset) if cyclic else consumed_samples,
        args.micro_batch_size,
        ps.get_data_parallel_rank(),
        ps.get_data_parallel_world_size(),
    )
    # Its own generator: the DataLoader draws its workers' base seed when an iterator starts, and
    # drawing from the default generator (on the CPU also the "CUDA" one that dropout uses) would
    # shift the dropout masks of a resumed run against the unbroken one.
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                                         persistent_workers=args.num_workers > 0, generator=generator,
                                         collate_fn=getattr(dataset, "collate_fn", None))
    batches = _cyclic(loader) if cyclic else iter(loader)
    vocab = getattr(args, "padded_vocab_size", None)
    return checked_batches(batches, vocab, data_prefixes(args)) if vocab else batches


def build_data_iterators(provider, args: argparse.Namespace, state, n_chunks: int = 1):
    """(train, valid, test) iterators of this rank (one per model chunk with virtual stages) and
    do_valid/do_test.

    Every rank calls the datasets ``provider`` (the builder synchronises them); only the ranks of
    :func:`dataset_built_on_this_rank` get datasets. Whether to validate and test is global rank
    0's answer, broadcast, as in Megatron-LM.
    """
    train_ds, valid_ds, test_ds = provider(train_valid_test_num_samples(args))

    def iterators(dataset, consumed, cyclic):
        its = [build_data_iterator(dataset, consumed, args, cyclic=cyclic) for _ in range(n_chunks)]
        return its if n_chunks > 1 else its[0]

    flags = torch.tensor([int(train_ds is not None), int(valid_ds is not None and args.eval_iters > 0),
                          int(test_ds is not None and args.eval_iters > 0)], dtype=torch.long)
    if args.device != "cpu":
        flags = flags.to(torch.cuda.current_device())
    torch.distributed.broadcast(flags, 0)
    do_train, do_valid, do_test = bool(flags[0]), bool(flags[1]), bool(flags[2])
    if not do_train and args.train_iters > state.iteration:
        source = (
            f"--split {args.split} leaves no training data in --data-path {' '.join(args.data_path)}: give "
            "the first (training) share a non-zero value, e.g. --split 969,30,1"
            if args.data_path
            else "there is no training data: give --train-data-path"
        )
        raise DataError(source)
    return (iterators(train_ds, state.consumed_train_samples, False),
            iterators(valid_ds, state.consumed_valid_samples, True) if do_valid else None,
            iterators(test_ds, 0, True) if do_test else None, do_valid, do_test)


_BATCH_DTYPES = (("tokens", torch.int64), ("labels", torch.int64), ("position_ids", torch.int64),
                 ("loss_mask", torch.float32))


def broadcast_batch(data_iterator, every_stage: bool = False) -> dict | None:
    """The next micro-batch on this rank: read on TP rank 0, broadcast to the TP group (None on middle
    stages).

    ``every_stage``: middle pipeline stages read their micro-batch too (see
    :func:`dataset_built_on_this_rank`).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import broadcast_data

    if not (every_stage or ps.is_pipeline_first_stage(ignore_virtual=True)
            or ps.is_pipeline_last_stage(ignore_virtual=True)):
        return None
    batch = next(data_iterator) if ps.get_tensor_model_parallel_rank() == 0 else None
    if ps.get_tensor_model_parallel_world_size() == 1:
        return {key: batch[key].to(dtype).cuda() for key, dtype in _BATCH_DTYPES}
    out: dict = {}
    for dtype in (torch.int64, torch.float32):
        keys = [key for key, d in _BATCH_DTYPES if d == dtype]
        data = {key: batch[key].to(dtype) for key in keys} if batch is not None else None
        out.update(broadcast_data(keys, data, dtype))
    return out


def take(iterator, n: int) -> list:
    """The next ``n`` items of ``iterator``."""
    return list(itertools.islice(iterator, n))
