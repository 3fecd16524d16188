"""Pairwise (preference) data: a prompt with a chosen and a rejected answer -> the four datasets of DPO.

Output, as MindSpeed-LLM writes it (``--data-path <prefix> --is-pairwise-dataset`` in its DPO scripts): four
int32 indexed datasets ``<prefix>_packed_{chosen_input_ids,chosen_labels,rejected_input_ids,rejected_labels}
_document``, document ``i`` of each holding the ``i``-th pair. Each side is the conversation (system,
earlier turns, the prompt) followed by its answer, rendered with ``--prompt-type``'s chat template and
tokenized exactly as an SFT sample (:mod:`mindspeed_llm.data.instruction`); its labels are the ids of the
answer's tokens and -100 on everything before it (earlier turns' answers included: only the compared
answer is learned).

* ``AlpacaStylePairwiseHandler``: ``prompt`` (column ``instruction``), ``query`` (``input``), ``system``,
  ``history``, ``chosen`` and ``rejected`` (text, or a turn ``{"from"|"role": ..., "value"|"content": ...}``).
  ``--map-keys '{"prompt": "question", "query": "", "system": "system"}'`` reads orca_dpo_pairs (an empty
  column name: no such column).
* ``SharegptStylePairwiseHandler``: ``messages`` (column ``conversations``: the turns up to the last user
  turn), ``system``, ``tags``, ``chosen`` and ``rejected`` (LLaMA-Factory's ShareGPT preference format).

An empty chosen or rejected answer is a bad row (an error naming it, or skipped with ``--skip-bad-rows``).
``--seq-length S`` drops a pair when either side has S tokens or more; pairs are not packed.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mindspeed_llm.data.chat_templates import ASSISTANT
from mindspeed_llm.data.errors import PreprocessError
from mindspeed_llm.data.indexed_writer import IndexedDatasetWriter
from mindspeed_llm.data.instruction import TOKEN_DTYPE, InstructionEncoder
from mindspeed_llm.data.instruction_handlers import (
    AlpacaStyleInstructionHandler,
    BadRow,
    SharegptStyleInstructionHandler,
    parse_map_keys,
)
from mindspeed_llm.data.pool import (
    Progress,
    commit_all,
    limit_tokenizer_threads,
    mp_context,
    ordered_results,
    plan_workers,
    stop_pool,
)
from mindspeed_llm.data.readers import InputSource, available_columns, iter_batches
from mindspeed_llm.data.tokenizer import DocumentTokenizer
from mindspeed_llm.signals import worker_signals

SIDES = ("chosen", "rejected")
PAIRWISE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
BATCH_ROWS = 200

Pair = tuple[str, list, str, str]  # system, turns before the answer, chosen answer, rejected answer


def pairwise_prefixes(output_prefix: str) -> dict[str, str]:
    """``<output-prefix>_packed_<key>_document`` for the four pairwise datasets."""
    return {key: f"{output_prefix}_packed_{key}_document" for key in PAIRWISE_KEYS}


def _answer(value: object, side: str) -> str:
    """A chosen/rejected cell as text: text itself, or the content of one assistant turn."""
    if isinstance(value, dict):
        for key in ("value", "content"):
            if key in value:
                value = value[key]
                break
        else:
            raise BadRow(f"the {side} answer is an object without 'value' or 'content'")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadRow(f"the {side} answer holds {type(value).__name__}, expected text")
    if not value.strip():
        raise BadRow(f"the {side} answer is empty")
    return value


def _without_empty_columns(map_keys: dict) -> dict:
    """``{"query": ""}`` (MindSpeed's orca example): no such column."""
    return {k: v for k, v in map_keys.items() if v != ""}


class _PairwiseMixin:
    """The prompt's conversation from the instruction handler, the two answers from their columns."""

    def _pair(self, row: dict, system: str, turns: list) -> Pair:
        return system, turns, _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")


class AlpacaStylePairwiseHandler(_PairwiseMixin, AlpacaStyleInstructionHandler):
    """instruction/input (+ system, history) with chosen/rejected answers -> pairs."""

    NAMES = {**AlpacaStyleInstructionHandler.NAMES, "chosen": "chosen", "rejected": "rejected"}
    NAMES.pop("response")
    REQUIRED = ("prompt", "chosen", "rejected")

    def __init__(self, map_keys: dict) -> None:
        super().__init__(_without_empty_columns(map_keys))

    def conversation(self, row: dict) -> Pair:
        """The pair of one row: the instruction handler's turns before the answer, and both answers."""
        self.columns.setdefault("response", "chosen")  # the answer placeholder's name in its messages
        system, turns = super().conversation({**row, "response": "-"})
        return self._pair(row, system, turns[:-1])


class SharegptStylePairwiseHandler(_PairwiseMixin, SharegptStyleInstructionHandler):
    """ShareGPT / OpenAI turns ending with the user's, with chosen/rejected answers -> pairs."""

    NAMES = {**SharegptStyleInstructionHandler.NAMES, "chosen": "chosen", "rejected": "rejected"}
    REQUIRED = ("messages", "chosen", "rejected")

    def __init__(self, map_keys: dict) -> None:
        super().__init__(_without_empty_columns(map_keys))

    def conversation(self, row: dict) -> Pair:
        """The pair of one row: the turns (alternating, ending with the user's) and both answers."""
        system, turns = super().conversation({**row, "messages": self._with_answer(row.get("messages"))})
        return self._pair(row, system, turns[:-1])

    def _with_answer(self, raw: object) -> object:
        """The turns plus a placeholder answer, so the instruction handler's alternation rule checks them."""
        if isinstance(raw, str):
            import json

            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise BadRow(f"{self.columns['messages']!r} is text but not JSON ({exc.msg})") from None
        if not isinstance(raw, list) or not raw or not isinstance(raw[-1], dict):
            raise BadRow(f"{self.columns['messages']!r} must be a list of turns ending with the user's")
        last = raw[-1]
        role_tag = self.tags.get("role_tag", "from" if "from" in last else "role")
        content_tag = self.tags.get("content_tag", "value" if role_tag == "from" else "content")
        answer_role = self.tags.get("assistant_tag", "gpt" if role_tag == "from" else "assistant")
        return [*raw, {role_tag: answer_role, content_tag: "-"}]


PAIRWISE_HANDLERS = {
    "AlpacaStylePairwiseHandler": AlpacaStylePairwiseHandler,
    "SharegptStylePairwiseHandler": SharegptStylePairwiseHandler,
}


class PairwiseEncoder:
    """Both sides of a pair: the chat template's tokens of the conversation and answer; labels -100 before
    the answer."""

    def __init__(self, tokenizer: DocumentTokenizer, prompt_type: str, append_eod: bool) -> None:
        self.inner = InstructionEncoder(tokenizer, prompt_type, append_eod)

    def side(self, system: str, turns: list, answer: str) -> tuple[list[int], list[int]]:
        """ids and labels of the conversation ending with ``answer`` (only ``answer`` learned)."""
        inner = self.inner
        text, spans = inner.template.render(system, [*turns, (ASSISTANT, answer)], inner.specials)
        ids, labels = inner._tokenize([(text, spans[-1:])])[0]  # noqa: SLF001 - the SFT tokenization itself
        if inner.append_eod:
            ids, labels = ids + [inner.eod], labels + [inner.eod]
        return ids, labels

    def encode(self, pairs: list[Pair]) -> list[tuple[list[int], list[int], list[int], list[int]]]:
        """(chosen ids, chosen labels, rejected ids, rejected labels) per pair."""
        out = []
        for system, turns, chosen, rejected in pairs:
            out.append((*self.side(system, turns, chosen), *self.side(system, turns, rejected)))
        return out


_worker_encoder: PairwiseEncoder | None = None


def _init_worker(path: str, prompt_type: str, append_eod: bool, threads: int) -> None:
    global _worker_encoder
    worker_signals()
    limit_tokenizer_threads(threads)
    if _worker_encoder is None:  # spawn / forkserver: nothing inherited
        _worker_encoder = PairwiseEncoder(DocumentTokenizer(path), prompt_type, append_eod)


def _encode_task(pairs: list[Pair]) -> list:
    return _worker_encoder.encode(pairs)


@dataclass
class PairwiseCounts:
    """What the run did, for its summary."""

    rows: int = 0
    skipped: int = 0
    pairs: int = 0
    dropped: int = 0
    tokens: int = 0


def preprocess_pairwise(
    source: InputSource, args: argparse.Namespace, tokenizer: DocumentTokenizer, log
) -> PairwiseCounts:
    """Encode every pair of ``source`` into the four datasets (temporary names until all are written)."""
    global _worker_encoder
    if args.pack or args.neat_pack:
        raise PreprocessError(
            f"--pack: {args.handler_name} writes one pair per document (DPO does not pack "
            "pairs); drop --pack/--neat-pack"
        )
    handler = PAIRWISE_HANDLERS[args.handler_name](parse_map_keys(args.map_keys))
    columns = handler.input_columns(available_columns(source), source.files[0])
    encoder = PairwiseEncoder(tokenizer, args.prompt_type, args.append_eod)
    counts = PairwiseCounts()
    progress = Progress(args.log_interval)
    writers: dict[str, IndexedDatasetWriter] = {}
    pool = None

    def tasks() -> Iterator:
        for batch in iter_batches(source, columns, BATCH_ROWS, args.skip_bad_rows):
            for message in batch.skipped:
                counts.skipped += 1
                log(f"skipped {message}")
            counts.rows += batch.num_rows + len(batch.skipped)
            good = []
            for i, pair in enumerate(handler.conversations(batch.columns, batch.num_rows)):
                if isinstance(pair, BadRow):
                    where = f"{batch.source}: row {batch.first_row + i}"
                    if not args.skip_bad_rows:
                        raise PreprocessError(
                            f"--input {where}: {pair}; fix the row or pass --skip-bad-rows to skip such rows"
                        )
                    counts.skipped += 1
                    log(f"skipped {where}: {pair}")
                else:
                    good.append(pair)
            if good:
                yield good, batch.bytes_read

    try:
        for key, prefix in pairwise_prefixes(args.output_prefix).items():
            writers[key] = IndexedDatasetWriter(prefix, TOKEN_DTYPE)
        _worker_encoder = encoder  # inherited by forked workers
        plan = plan_workers(args.workers)  # the cores the text and instruction paths plan with
        log(plan.describe())
        pool = mp_context().Pool(
            plan.processes,
            initializer=_init_worker,
            initargs=(tokenizer.path, args.prompt_type, args.append_eod, plan.threads),
        )
        window = 2 * plan.processes + 2
        for encoded, input_bytes in ordered_results(pool, tasks(), window, _encode_task):
            tokens = 0
            for sides in encoded:
                if args.seq_length is not None and max(len(sides[0]), len(sides[2])) >= args.seq_length:
                    counts.dropped += 1
                    continue
                for key, values in zip(PAIRWISE_KEYS, sides):
                    array = np.asarray(values, dtype=TOKEN_DTYPE)
                    writers[key].add_documents(array, np.array([array.size], dtype=np.int64))
                counts.pairs += 1
                tokens += len(sides[0]) + len(sides[2])
            counts.tokens += tokens
            progress.update(len(encoded), tokens, input_bytes, log)
        pool.close()
        pool.join()
        pool = None
        if counts.pairs == 0:
            raise PreprocessError(
                f"--input {args.input}: no pairs to write ({counts.rows} rows, {counts.skipped} skipped, "
                f"{counts.dropped} longer than --seq-length {args.seq_length}); check --input and --map-keys"
            )
        commit_all(writers.values())
        return counts
    except BaseException:
        if pool is not None:
            stop_pool(pool)
        for writer in writers.values():
            writer.abort()
        raise


def summary(counts: PairwiseCounts, args: argparse.Namespace) -> list[str]:
    """The run's summary lines."""
    lines = [f"done: {counts.rows} rows -> {counts.pairs} pairs, {counts.tokens} tokens (chosen + rejected)"]
    if args.seq_length is not None:
        lines.append(
            f"--seq-length {args.seq_length}: {counts.dropped} pairs with a side of {args.seq_length} "
            "tokens or more dropped"
        )
    if counts.skipped:
        lines.append(f"skipped {counts.skipped} bad rows (--skip-bad-rows)")
    return lines
