"""Instruction data: conversations -> token ids, labels (-100 on prompts) and attention masks, packed or not.

Output, as MindSpeed-LLM writes it (``DATA_PATH=<prefix>`` in its tune scripts): three int32
indexed datasets ``<prefix>_packed_{input_ids,attention_mask,labels}_document``, one document of one
sequence per sample (or per pack with ``--pack``). Labels are the token ids on learned tokens and
-100 (IGNORE_INDEX) elsewhere; the attention mask is 1 on every token, or with ``--neat-pack`` the
1-based number of the sample in its pack (0 on padding).

``--seq-length S``: a sample of S tokens or more is dropped (MindSpeed's rule), or with
``--neat-pack`` cut to its first S-1 tokens; both are counted in the summary. ``--pack`` fills
sequences of S-1 tokens with whole samples, greedily (the longest sample that still fits, until
none does), and pads each to S tokens with the pad token (label -100).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mindspeed_llm.data.chat_templates import build_template, template_specials
from mindspeed_llm.data.errors import OutputWriteError, PreprocessError
from mindspeed_llm.data.indexed_writer import IndexedDatasetWriter, remove_stale_temporaries
from mindspeed_llm.data.instruction_handlers import INSTRUCTION_HANDLERS, BadRow, parse_map_keys
from mindspeed_llm.data.pool import (
    Progress,
    commit_all,
    limit_tokenizer_threads,
    mp_context,
    ordered_results,
    plan_workers,
    stop_pool,
)
from mindspeed_llm.data.readers import JSON_FORMATS, InputSource, available_columns, iter_batches
from mindspeed_llm.data.tokenizer import DocumentTokenizer
from mindspeed_llm.io_errors import describe_os_error
from mindspeed_llm.signals import worker_signals

IGNORE_INDEX = -100
PACKED_KEYS = ("input_ids", "attention_mask", "labels")
TOKEN_DTYPE = np.dtype(np.int32)  # MindSpeed's IndexedDatasetBuilder default: holds -100
BATCH_ROWS = 200
_MAX_SKIPPED_SHOWN = 10

_worker_encoder: InstructionEncoder | None = None


def instruction_prefixes(output_prefix: str) -> dict[str, str]:
    """``<output-prefix>_packed_<key>_document`` for input_ids, attention_mask and labels."""
    return {key: f"{output_prefix}_packed_{key}_document" for key in PACKED_KEYS}


class InstructionEncoder:
    """Renders conversations with a chat template and tokenizes them into ids and labels."""

    def __init__(self, tokenizer: DocumentTokenizer, prompt_type: str, append_eod: bool) -> None:
        self.path = tokenizer.path
        self.prompt_type = prompt_type
        self.append_eod = append_eod
        self.hf = tokenizer.hf
        self.eod = tokenizer.eod
        self.template = build_template(prompt_type, self.hf, tokenizer.path)
        self.specials = template_specials(self.hf)
        self.fast = bool(getattr(self.hf, "is_fast", False))

    def sample(self, system: str, turns: list) -> tuple[list[int], list[int]]:
        """One conversation's ids and labels."""
        return self._tokenize([self.template.render(system, turns, self.specials)])[0]

    def _render(self, index: int, system: str, turns: list) -> tuple[str, list]:
        """One conversation through the template; a template that raises (jinja2's ``raise_exception``, a
        role it does not support) is a :class:`TemplateFailed` for conversation ``index``."""
        try:
            return self.template.render(system, turns, self.specials)
        except PreprocessError as exc:
            raise TemplateFailed(index, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a tokenizer's own template fails in jinja2's many ways
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise TemplateFailed(
                index, f"--prompt-type {self.prompt_type}: the chat template of {self.path} fails "
                f"({type(exc).__name__}: {reason})") from None

    def _tokenize(self, rendered: list[tuple[str, list]]) -> list[tuple[list[int], list[int]]]:
        if not self.fast:
            return [self._tokenize_pieces(text, spans) for text, spans in rendered]
        enc = self.hf([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(ids))
            learned = np.zeros(len(ids), dtype=bool)
            for a, b in spans:  # a token belongs to the span it starts in
                learned |= (starts >= a) & (starts < b)
            labels = np.where(learned, np.asarray(ids, dtype=np.int64), IGNORE_INDEX)
            out.append((list(ids), labels.tolist()))
        return out

    def _tokenize_pieces(self, text: str, spans: list) -> tuple[list[int], list[int]]:
        """Slow tokenizers (no offsets): prompt and answer pieces tokenized one by one."""
        ids: list[int] = []
        labels: list[int] = []
        cut = 0
        for a, b in [*spans, (len(text), len(text))]:
            for piece, learned in ((text[cut:a], False), (text[a:b], True)):
                piece_ids = self.hf.encode(piece, add_special_tokens=False) if piece else []
                ids += piece_ids
                labels += piece_ids if learned else [IGNORE_INDEX] * len(piece_ids)
            cut = b
        return ids, labels

    def encode(self, conversations: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat int32 ids and labels of the conversations and each one's length."""
        pairs = self._tokenize(
            [self._render(i, system, turns) for i, (system, turns) in enumerate(conversations)]
        )
        if self.append_eod:
            pairs = [(ids + [self.eod], labels + [self.eod]) for ids, labels in pairs]
        lengths = np.fromiter((len(ids) for ids, _ in pairs), dtype=np.int64, count=len(pairs))
        ids = np.fromiter((t for p, _ in pairs for t in p), dtype=TOKEN_DTYPE, count=int(lengths.sum()))
        labels = np.fromiter((t for _, p in pairs for t in p), dtype=TOKEN_DTYPE, count=int(lengths.sum()))
        return ids, labels, lengths


def _init_worker(path: str, prompt_type: str, append_eod: bool, threads: int) -> None:
    global _worker_encoder
    worker_signals()
    limit_tokenizer_threads(threads)
    if _worker_encoder is None:  # spawn: nothing inherited
        _worker_encoder = InstructionEncoder(DocumentTokenizer(path), prompt_type, append_eod)


class TemplateFailed(Exception):
    """The chat template raised on the ``index``-th conversation of a task (``reason``: one line)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index, self.reason = index, reason


def _encode_task(conversations: list) -> tuple:
    """(ids, labels, lengths), or (None, index, reason) when the template raised on a conversation."""
    try:
        return _worker_encoder.encode(conversations)
    except TemplateFailed as exc:
        return None, exc.index, exc.reason


@dataclass
class SftCounts:
    """What the run did, for its summary."""

    rows: int = 0
    skipped: int = 0
    samples: int = 0
    dropped: int = 0
    truncated: int = 0
    tokens: int = 0
    learned: int = 0
    packs: int = 0
    no_answer: int = 0  # samples kept without a learned token


class _Scratch:
    """Unpacked samples on disk until they are packed (``--pack``): ids and labels, int32."""

    def __init__(self, output_prefix: str) -> None:
        self.base = f"{output_prefix}_packed_unpacked"
        remove_stale_temporaries(self.base)
        pid = os.getpid()
        self.paths = (f"{self.base}.bin.tmp{pid}", f"{self.base}.lengths.tmp{pid}")
        self.lengths: list[int] = []
        self._files = []
        with self._writing():
            for path in self.paths:
                self._files.append(open(path, "wb"))  # noqa: SIM115 - closed in close()/remove()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """OSError (full disk, read-only folder) -> one line naming the file."""
        try:
            yield
        except OSError as exc:
            raise OutputWriteError(
                f"writing {self.paths[0]} failed ({describe_os_error(exc)}); temporary files removed, "
                "no earlier output was changed"
            ) from None

    def add(self, ids: np.ndarray, labels: np.ndarray) -> None:
        """Append one sample."""
        with self._writing():
            self._files[0].write(ids.tobytes())
            self._files[1].write(labels.tobytes())
        self.lengths.append(ids.size)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        """Flush and map both files for reading."""
        with self._writing():
            for f in self._files:
                f.close()
        return tuple(np.memmap(p, dtype=TOKEN_DTYPE, mode="r") for p in self.paths)

    def remove(self) -> None:
        """Close and delete both files (best effort: the first error is the one reported)."""
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        for p in self.paths:
            with contextlib.suppress(OSError):
                if os.path.exists(p):
                    os.remove(p)


def greedy_packs(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per pack: each pack takes the longest remaining sample that fits, until none does."""
    by_length: dict[int, deque] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, deque()).append(i)
    distinct = sorted(by_length)
    packs = []
    while distinct:
        room, pack = capacity, []
        while True:
            j = bisect.bisect_right(distinct, room) - 1
            if j < 0:
                break
            n = distinct[j]
            pack.append(by_length[n].popleft())
            room -= n
            if not by_length[n]:
                del distinct[j]
        if not pack:  # cannot happen: every kept sample fits the capacity
            raise RuntimeError(f"sample longer than the pack capacity {capacity}")
        packs.append(pack)
    return packs


def _pad_id(encoder: InstructionEncoder) -> int:
    for value in (encoder.hf.pad_token_id, encoder.hf.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def _write_sample(writers: dict, ids: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
    length = np.array([ids.size], dtype=np.int64)
    writers["input_ids"].add_documents(ids, length)
    writers["attention_mask"].add_documents(mask, length)
    writers["labels"].add_documents(labels, length)


def _write_packs(
    writers: dict, scratch: _Scratch, args: argparse.Namespace, pad: int, counts: SftCounts
) -> None:
    """Pack the scratch samples into sequences of --seq-length tokens."""
    ids_all, labels_all = scratch.close()
    lengths = scratch.lengths
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    seq = args.seq_length
    for pack in greedy_packs(lengths, seq - 1):  # one position stays free: MindSpeed keeps a pad token
        ids = np.full(seq, pad, dtype=TOKEN_DTYPE)
        labels = np.full(seq, IGNORE_INDEX, dtype=TOKEN_DTYPE)
        mask = np.full(seq, 0 if args.neat_pack else 1, dtype=TOKEN_DTYPE)
        at = 0
        for number, i in enumerate(pack, start=1):
            a, b = starts[i], starts[i + 1]
            ids[at:at + b - a] = ids_all[a:b]
            labels[at:at + b - a] = labels_all[a:b]
            if args.neat_pack:
                mask[at:at + b - a] = number
            at += b - a
        _write_sample(writers, ids, labels, mask)
        counts.packs += 1


def _bad_rows(conversations: list, batch, args: argparse.Namespace, counts: SftCounts, write,
              rows: list | None = None) -> list:
    """The good conversations of a batch (``rows`` gets where each one is); a bad one stops the run unless
    --skip-bad-rows."""
    good = []
    for i, conv in enumerate(conversations):
        if not isinstance(conv, BadRow) and rows is not None:
            rows.append(f"{batch.source}: row {batch.first_row + i}")
        if isinstance(conv, BadRow):
            where = f"{batch.source}: row {batch.first_row + i}"
            if not args.skip_bad_rows:
                raise PreprocessError(
                    f"--input {where}: {conv}; fix the row or pass --skip-bad-rows to skip such rows"
                )
            counts.skipped += 1
            if counts.skipped <= _MAX_SKIPPED_SHOWN:
                write(f"skipped {where}: {conv}")
        else:
            good.append(conv)
    return good


def preprocess_instruction(
    source: InputSource, args: argparse.Namespace, tokenizer: DocumentTokenizer, log
) -> SftCounts:
    """Encode every conversation of ``source`` into the three datasets (temporary names until done)."""
    global _worker_encoder
    handler = INSTRUCTION_HANDLERS[args.handler_name](parse_map_keys(args.map_keys))
    # JSON records need not share keys: an optional column is read from whichever row has it.
    per_row = source.format in JSON_FORMATS
    columns = handler.input_columns(available_columns(source), source.files[0], per_row=per_row)
    encoder = InstructionEncoder(tokenizer, args.prompt_type, args.append_eod)
    prefixes = instruction_prefixes(args.output_prefix)
    counts = SftCounts()
    progress = Progress(args.log_interval)
    writers: dict[str, IndexedDatasetWriter] = {}
    scratch = None
    pool = None
    seq = args.seq_length

    def tasks() -> Iterator:
        for batch in iter_batches(source, columns, BATCH_ROWS, args.skip_bad_rows,
                                  optional=handler.optional_columns):
            for message in batch.skipped:
                counts.skipped += 1
                if counts.skipped <= _MAX_SKIPPED_SHOWN:
                    log(f"skipped {message}")
            counts.rows += batch.num_rows + len(batch.skipped)
            rows: list[str] = []
            good = _bad_rows(handler.conversations(batch.columns, batch.num_rows), batch, args, counts, log,
                             rows)
            if good:
                yield good, (batch.bytes_read, rows)

    try:
        if args.pack:
            scratch = _Scratch(args.output_prefix)
        for key, prefix in prefixes.items():
            writers[key] = IndexedDatasetWriter(prefix, TOKEN_DTYPE)
        _worker_encoder = encoder  # inherited by forked workers
        plan = plan_workers(args.workers)
        log(plan.describe())
        pool = mp_context().Pool(
            plan.processes,
            initializer=_init_worker,
            initargs=(tokenizer.path, args.prompt_type, args.append_eod, plan.threads),
        )
        window = 2 * plan.processes + 2
        for result, (input_bytes, rows) in ordered_results(pool, tasks(), window, _encode_task):
            if result[0] is None:  # the template raised on one conversation: (None, index, reason)
                _, index, reason = result
                raise PreprocessError(f"{reason} at --input {rows[index]}; fix the row or choose another "
                                      "--prompt-type")
            ids, labels, lengths = result
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            for k in range(lengths.size):
                a, b = int(bounds[k]), int(bounds[k + 1])
                sample_ids, sample_labels = ids[a:b], labels[a:b]
                if seq is not None and b - a >= seq:
                    if not args.neat_pack:
                        counts.dropped += 1
                        continue
                    counts.truncated += 1
                    sample_ids, sample_labels = sample_ids[: seq - 1], sample_labels[: seq - 1]
                learned = int(np.count_nonzero(sample_labels != IGNORE_INDEX))
                counts.samples += 1
                counts.tokens += sample_ids.size
                counts.learned += learned
                counts.no_answer += learned == 0
                if scratch is not None:
                    scratch.add(sample_ids, sample_labels)
                else:
                    _write_sample(
                        writers, sample_ids, sample_labels, np.ones(sample_ids.size, dtype=TOKEN_DTYPE)
                    )
            progress.update(int(lengths.size), int(ids.size), input_bytes, log)
        pool.close()
        pool.join()
        pool = None
        _check_samples(counts, args)
        if scratch is not None:
            _write_packs(writers, scratch, args, _pad_id(encoder), counts)
        commit_all(writers.values())
        return counts
    except BaseException:
        if pool is not None:
            stop_pool(pool)
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if scratch is not None:
            scratch.remove()


def _check_samples(counts: SftCounts, args: argparse.Namespace) -> None:
    """Refuse a dataset without samples or without a single learned token."""
    if counts.rows == 0 or counts.rows == counts.skipped:
        what = "every row was skipped as bad" if counts.skipped else "it holds no rows"
        raise PreprocessError(f"--input {args.input}: no conversations to write ({what}); check the input")
    if counts.samples == 0:
        raise PreprocessError(
            f"--seq-length {args.seq_length}: all {counts.dropped} samples have {args.seq_length} tokens or "
            "more and were dropped; raise --seq-length (or pass --pack --neat-pack to cut them instead)"
        )
    if counts.learned == 0:
        raise PreprocessError(
            f"--input {args.input}: none of the {counts.samples} samples has a token to learn (every answer "
            f"is empty under --prompt-type {args.prompt_type}); check the response column (--map-keys) and "
            "--prompt-type"
        )


def summary(counts: SftCounts, args: argparse.Namespace) -> list[str]:
    """The run's summary lines."""
    lines = [
        f"done: {counts.rows} rows -> {counts.samples} samples, {counts.tokens} tokens of which "
        f"{counts.learned} learned (labels not -100)"
    ]
    if args.seq_length is not None:
        rule = (
            f"{counts.truncated} cut to their first {args.seq_length - 1} tokens (--neat-pack)"
            if args.neat_pack else f"{counts.dropped} dropped"
        )
        lines.append(f"--seq-length {args.seq_length}: samples of {args.seq_length} tokens or more: {rule}")
    if counts.skipped:
        lines.append(f"skipped {counts.skipped} bad rows (--skip-bad-rows)")
    if counts.no_answer:
        lines.append(f"{counts.no_answer} samples have no learned token (empty answers)")
    if args.pack:
        fill = counts.tokens / max(counts.packs * args.seq_length, 1)
        lines.append(
            f"--pack: {counts.samples} samples in {counts.packs} sequences of {args.seq_length} tokens "
            f"({fill:.1%} real tokens, the rest padding)"
        )
    return lines
