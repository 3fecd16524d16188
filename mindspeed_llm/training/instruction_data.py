"""Instruction (SFT) data for training: preprocess_data.py's three datasets -> micro-batches of ids and
labels.

``--data-path PREFIX`` names ``PREFIX_packed_{input_ids,attention_mask,labels}_document`` (int32, one
sample or one ``--pack`` of samples per document). ``--split`` divides the documents; each split is
read in a seeded order, a fresh permutation every epoch (the data position is the consumed-sample
count in the checkpoint, so a resumed run reads on exactly where the unbroken one would).

A micro-batch (:class:`InstructionCollator`) has the keys of megatron's GPT batch, so the GPT
forward step trains on it unchanged:

- ``tokens``: the sample's ids, cut to ``--seq-length``, right-padded with the pad id to
  ``--seq-length`` (or, with ``--no-pad-to-seq-lengths``, to the micro-batch's longest sample rounded
  up to ``--pad-to-multiple-of``, at most ``--seq-length``);
- ``labels``: shifted, so token t is trained to predict the label of token t+1 (transformers' rule);
  -100 (not learned) on prompts, after a sample's last token, at document ends and on padding; the
  loss sees 0 there and ``loss_mask`` is 0;
- ``loss_mask``: 1 where the shifted label is learned;
- ``position_ids``: 0..n-1, or with ``--reset-attention-mask`` restarting at every sample of a pack
  (the samples numbered 1, 2, ... in the attention-mask dataset by ``--pack --neat-pack``; padding is one
  more document).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mindspeed_llm.runtime.errors import DataError

IGNORE_INDEX = -100


def instruction_paths(prefix: str) -> dict[str, str]:
    """``{input_ids, attention_mask, labels}`` -> the dataset prefixes of ``--data-path PREFIX``."""
    from mindspeed_llm.data.instruction import instruction_prefixes

    return instruction_prefixes(prefix)


def split_documents(split: str, count: int) -> list[np.ndarray]:
    """Document indices of the train, valid and test splits (Megatron's rounding of ``--split``)."""
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    weights = parse_and_normalize_split(split)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w * count)))
    excess = bounds[-1] - count
    bounds = [bounds[0]] + [b - excess for b in bounds[1:]]
    return [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(3)]


class InstructionDataset(torch.utils.data.Dataset):
    """One split of the instruction data: ``num_samples`` samples, epochs of seeded document permutations."""

    def __init__(self, prefix: str, documents: np.ndarray, num_samples: int, seed: int, name: str,
                 mmap: bool = True) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        self.name = name
        self.parts = {key: IndexedDataset(path, mmap=mmap) for key, path in instruction_paths(prefix).items()}
        epochs = max(1, -(-num_samples // len(documents)))
        rng = np.random.RandomState(seed)  # its own generator: the order depends on --seed only
        self.order = np.concatenate([rng.permutation(documents) for _ in range(epochs)])
        self.epochs = epochs

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        doc = int(self.order[idx])
        return {key: np.asarray(part[doc], dtype=np.int64) for key, part in self.parts.items()}


def check_instruction_data(prefix: str, seq_length: int, reset_attention_mask: bool) -> dict:
    """DataError unless the three datasets describe the same samples; facts for the start-up line.

    O(documents) on the indexes; the labels and the attention mask are each read once (a sample with a token
    to learn within ``seq_length``; neat-packed samples).
    """
    from megatron.core.datasets.indexed_dataset import _IndexReader

    paths = instruction_paths(prefix)
    readers = {key: _IndexReader(path + ".idx", multimodal=False) for key, path in paths.items()}
    lengths = {key: np.array(reader.sequence_lengths) for key, reader in readers.items()}  # copies: a reader
    del readers  # unmaps its index when it is collected
    ids = lengths["input_ids"]
    for key in ("attention_mask", "labels"):
        if len(lengths[key]) != len(ids) or not np.array_equal(lengths[key], ids):
            raise DataError(
                f"{paths[key]} does not match {paths['input_ids']} ({len(lengths[key])} vs {len(ids)} "
                "samples, or other lengths): the three datasets come from different preprocess_data.py "
                "runs; re-run it to write them together"
            )
    facts = {
        "samples": len(ids),
        "longer": int(np.count_nonzero(ids > seq_length)),
        "longest": int(ids.max()),
    }
    _check_learned_within(paths["labels"], ids, seq_length)
    mask = np.memmap(paths["attention_mask"] + ".bin", dtype=np.int32, mode="r")
    facts["neat_packed"] = bool(mask.size) and int(mask.max()) > 1  # samples numbered inside the packs
    del mask
    if reset_attention_mask and not facts["neat_packed"]:
        raise DataError(
            f"--reset-attention-mask: {paths['attention_mask']} marks no samples inside the packs "
            "(it was written without --pack --neat-pack): re-run preprocess_data.py with --pack "
            "--neat-pack --seq-length N, or drop --reset-attention-mask"
        )
    return facts


def _check_learned_within(labels_path: str, lengths: np.ndarray, seq_length: int) -> None:
    """DataError when no sample keeps a token to learn within its first ``seq_length`` tokens (every step
    would train on nothing); names --seq-length and the shortest prompt. One pass over the labels."""
    labels = np.memmap(labels_path + ".bin", dtype=np.int32, mode="r")
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]])
    learned = np.flatnonzero(labels != IGNORE_INDEX)
    del labels
    none = DataError(f"{labels_path}: no sample has a token to learn (every label is {IGNORE_INDEX}): "
                     "re-run preprocess_data.py on data with answers")
    if learned.size == 0:
        raise none
    # A label is learned from the token before it (the collator shifts labels): positions 1 .. seq - 1.
    first = np.searchsorted(learned, starts + 1)
    at = np.where(first < learned.size, learned[np.minimum(first, learned.size - 1)], np.iinfo(np.int64).max)
    has_answer = at < starts + lengths
    if np.any(has_answer & (at < starts + np.minimum(lengths, seq_length))):
        return
    if not np.any(has_answer):
        raise none
    prompt = int((at - starts)[has_answer].min())
    raise DataError(
        f"--seq-length {seq_length}: no sample keeps a token to learn within its first {seq_length} tokens "
        f"(the shortest prompt is {prompt} tokens): every step would train on nothing; raise --seq-length "
        f"above {prompt}, or shorten the prompts"
    )


def document_position_ids(mask: np.ndarray) -> np.ndarray:
    """Positions restarting where the sample number of a neat pack's attention mask changes."""
    n = mask.size
    starts = np.flatnonzero(np.concatenate([[True], mask[1:] != mask[:-1]]))
    lengths = np.diff(np.append(starts, n))
    return np.arange(n) - np.repeat(starts, lengths)


class InstructionCollator:
    """Samples -> one micro-batch (``tokens``, ``labels``, ``loss_mask``, ``position_ids``); see the module
    doc."""

    def __init__(self, seq_length: int, pad_id: int, pad_to_multiple_of: int | None = None,
                 reset_position_ids: bool = False) -> None:
        self.seq_length = seq_length
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.reset_position_ids = reset_position_ids

    def batch_length(self, longest: int) -> int:
        """``--seq-length``, or the longest sample rounded up to ``--pad-to-multiple-of`` (at most
        ``--seq-length``)."""
        if self.pad_to_multiple_of is None:
            return self.seq_length
        m = self.pad_to_multiple_of
        return min(self.seq_length, -(-longest // m) * m)

    def __call__(self, samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        cut = [{key: value[:self.seq_length] for key, value in s.items()} for s in samples]
        length = self.batch_length(max(s["input_ids"].size for s in cut))
        b = len(cut)
        tokens = np.full((b, length), self.pad_id, dtype=np.int64)
        labels = np.full((b, length), IGNORE_INDEX, dtype=np.int64)
        positions = np.tile(np.arange(length, dtype=np.int64), (b, 1))
        for i, s in enumerate(cut):
            n = s["input_ids"].size
            tokens[i, :n] = s["input_ids"]
            labels[i, :n - 1] = s["labels"][1:]  # token t predicts token t+1
            if self.reset_position_ids:
                mask = np.zeros(length, dtype=np.int64)  # padding: number 0, a document of its own
                mask[:n] = s["attention_mask"]
                positions[i] = document_position_ids(mask)
                # The last token of a document predicts nothing (the next one starts another sample).
                labels[i, :-1][positions[i, 1:] == 0] = IGNORE_INDEX
        learned = labels != IGNORE_INDEX
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(np.where(learned, labels, 0)),
            "loss_mask": torch.from_numpy(learned.astype(np.float32)),
            "position_ids": torch.from_numpy(positions),
        }


def pad_id_of(tokenizer) -> int:
    """The pad id: the tokenizer's pad token, else its EOD (only padding holds it, and padding is not
    learned)."""
    hf = getattr(tokenizer, "hf_tokenizer", None)
    pad = getattr(hf, "pad_token_id", None) if hf is not None else None
    return int(pad) if pad is not None else int(tokenizer.eod)


def build_instruction_datasets(
    args: argparse.Namespace, tokenizer, num_samples: list[int], built_here: bool
) -> list:
    """(train, valid, test) :class:`InstructionDataset` of ``--data-path`` (None for an empty split or off
    this rank).

    Every rank checks the three datasets (the same files: a bad one fails on all ranks alike).
    """
    from mindspeed_llm.config.paths import split_data_path

    prefix = split_data_path(args.data_path)[0][0]
    collator = instruction_collator(args, tokenizer)
    facts = check_instruction_data(prefix, args.seq_length, args.reset_attention_mask)
    splits = split_documents(args.split, facts["samples"])
    from mindspeed_llm.training.training_log import print_rank_0

    print_rank_0(f"> instruction data {prefix}: {facts['samples']} samples (train/valid/test "
                 f"{'/'.join(str(len(s)) for s in splits)}), prompt type {args.prompt_type or 'not given'}")
    if facts["neat_packed"] and not args.reset_attention_mask:
        print_rank_0(
            f"> WARNING: {prefix} is neat-packed (preprocess_data.py --neat-pack: several samples per "
            "sequence), trained without --reset-attention-mask: every pack's samples attend to each other "
            "and their positions run on; add --reset-attention-mask to train each sample on its own"
        )
    if facts["longer"]:
        print_rank_0(
            f"> {facts['longer']} samples are longer than --seq-length {args.seq_length} (the longest "
            f"{facts['longest']} tokens): only their first {args.seq_length} tokens are trained on; "
            f"preprocess with --seq-length {args.seq_length} to drop them instead"
        )
    out = []
    for name, docs, n in zip(("train", "valid", "test"), splits, num_samples):
        if not built_here or docs.size == 0 or n == 0:
            out.append(None)
            continue
        dataset = InstructionDataset(prefix, docs, n, args.seed, name, mmap=not args.no_mmap_bin_files)
        dataset.collate_fn = collator
        out.append(dataset)
    return out


def instruction_collator(args: argparse.Namespace, tokenizer) -> InstructionCollator:
    """The collator of the flags (--seq-length, --no-pad-to-seq-lengths, --reset-attention-mask)."""
    return InstructionCollator(args.seq_length, pad_id_of(tokenizer),
                               args.pad_to_multiple_of if args.no_pad_to_seq_lengths else None,
                               args.reset_position_ids)

