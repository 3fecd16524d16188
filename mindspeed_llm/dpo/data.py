"""Pairwise data for training: the four datasets of preprocess_data.py's pairwise handlers -> micro-batches.

``--data-path PREFIX`` names ``PREFIX_packed_{chosen,rejected}_{input_ids,labels}_document`` (int32, document
``i`` of each the ``i``-th pair). ``--split`` divides the pairs; each split is read in a seeded order, a
fresh permutation every epoch, as the SFT data (the position is the consumed-sample count of the
checkpoint: a resumed run reads on where the unbroken one would).

A micro-batch of ``b`` pairs is one batch of ``2b`` sequences, the chosen answers first, then the
rejected ones in the same order, with the keys of the SFT batch (``tokens``, shifted ``labels``,
``loss_mask``, ``position_ids``; :class:`~mindspeed_llm.training.instruction_data.InstructionCollator`'s
padding: to ``--seq-length``, or with ``--no-pad-to-seq-lengths`` to the longest of the ``2b``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mindspeed_llm.data.pairwise import PAIRWISE_KEYS, SIDES, pairwise_prefixes
from mindspeed_llm.runtime.errors import DataError

IGNORE_INDEX = -100


def check_pairwise_data(prefix: str) -> int:
    """DataError unless the four datasets hold the same pairs (lengths side by side) and every answer has
    a learned token; returns the number of pairs. O(pairs) on the indexes and labels."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, _IndexReader

    paths = pairwise_prefixes(prefix)
    lengths = {}
    for key, path in paths.items():
        reader = _IndexReader(path + ".idx", multimodal=False)
        lengths[key] = np.array(reader.sequence_lengths)
        del reader
    for side in SIDES:
        ids, labels = lengths[f"{side}_input_ids"], lengths[f"{side}_labels"]
        if len(ids) != len(labels) or not np.array_equal(ids, labels):
            raise DataError(
                f"{paths[side + '_labels']} does not match {paths[side + '_input_ids']} "
                f"({len(labels)} vs {len(ids)} pairs, or other lengths): the datasets come from "
                "different preprocess_data.py runs; re-run it to write the four together"
            )
    count = len(lengths["chosen_input_ids"])
    if len(lengths["rejected_input_ids"]) != count:
        raise DataError(
            f"{paths['rejected_input_ids']} holds {len(lengths['rejected_input_ids'])} pairs but "
            f"{paths['chosen_input_ids']} {count}: the datasets come from different "
            "preprocess_data.py runs; re-run it to write the four together"
        )
    if count == 0:
        raise DataError(
            f"--data-path {prefix}: the pairwise datasets hold no pairs; preprocess a file with rows"
        )
    for side in SIDES:
        labels = IndexedDataset(paths[f"{side}_labels"])
        for i in range(count):
            if not np.any(labels[i] != IGNORE_INDEX):
                raise DataError(
                    f"{paths[side + '_labels']}: pair {i} has an empty {side} answer (no learned "
                    "token): re-run preprocess_data.py, which refuses such rows"
                )
    return count


class PairwiseDataset(torch.utils.data.Dataset):
    """One split of the pairs: ``num_samples`` pairs, epochs of seeded permutations."""

    def __init__(
        self, prefix: str, documents: np.ndarray, num_samples: int, seed: int, name: str, mmap: bool = True
    ) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.name = name
        self.parts = {key: IndexedDataset(path, mmap=mmap) for key, path in pairwise_prefixes(prefix).items()}
        epochs = max(1, -(-num_samples // len(documents)))
        rng = np.random.RandomState(seed)
        self.order = np.concatenate([rng.permutation(documents) for _ in range(epochs)])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        doc = int(self.order[idx])
        return {key: np.asarray(self.parts[key][doc], dtype=np.int64) for key in PAIRWISE_KEYS}


class PairwiseCollator:
    """Pairs -> one batch of their chosen sequences, then their rejected ones (SFT's collation)."""

    def __init__(self, inner) -> None:
        self.inner = inner  # an InstructionCollator

    def __call__(self, pairs: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        rows = [
            {"input_ids": p[f"{side}_input_ids"], "labels": p[f"{side}_labels"]}
            for side in SIDES
            for p in pairs
        ]
        return self.inner(rows)


def build_pairwise_datasets(
    args: argparse.Namespace, tokenizer, num_samples: list[int], built_here: bool
) -> list:
    """(train, valid, test) :class:`PairwiseDataset` of ``--data-path`` (None for an empty split or off this
    rank). Every rank checks the datasets (the same files: a bad one fails on all ranks alike)."""
    from mindspeed_llm.config.paths import split_data_path
    from mindspeed_llm.training.instruction_data import instruction_collator, split_documents
    from mindspeed_llm.training.training_log import print_rank_0

    prefix = split_data_path(args.data_path)[0][0]
    count = check_pairwise_data(prefix)
    splits = split_documents(args.split, count)
    print_rank_0(
        f"> pairwise data {prefix}: {count} pairs (train/valid/test "
        f"{'/'.join(str(len(s)) for s in splits)}), prompt type {args.prompt_type or 'not given'}"
    )
    collator = PairwiseCollator(instruction_collator(args, tokenizer))
    out = []
    for name, docs, n in zip(("train", "valid", "test"), splits, num_samples):
        if not built_here or docs.size == 0 or n == 0:
            out.append(None)
            continue
        dataset = PairwiseDataset(prefix, docs, n, args.seed, name, mmap=not args.no_mmap_bin_files)
        dataset.collate_fn = collator
        out.append(dataset)
    return out
