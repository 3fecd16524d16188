"""The preprocessing pipeline: read -> handler -> tokenize (worker processes) -> write, in order.

The main process reads the input in batches and writes the output; ``--workers`` processes
tokenize. At most ``2 * workers + 2`` tasks are in flight (``FIRST_PENDING`` at the start), so memory does
not grow with the input, and results are written in input order whatever the number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from mindspeed_llm.data.bpe_engine import SAMPLE_EVERY
from mindspeed_llm.data.errors import OutputWriteError, PreprocessError
from mindspeed_llm.data.handlers import PAIRWISE_HANDLER_NAMES, build_handler, is_instruction_handler
from mindspeed_llm.data.indexed_writer import (
    IndexedDatasetWriter,
    dataset_paths,
    read_index,
    remove_stale_temporaries,
)
from mindspeed_llm.data.pool import (
    Progress,
    commit_all,
    limit_tokenizer_threads,
    mp_context,
    ordered_results,
    plan_workers,
    stop_pool,
    usable_cpus,
)
from mindspeed_llm.data.readers import (
    InputSource,
    available_columns,
    discover_inputs,
    iter_batches,
    total_bytes,
    total_rows,
)
from mindspeed_llm.data.tokenizer import (
    BackendSpec,
    DocumentTokenizer,
    check_tokenizer_path,
    flatten_ids,
    speculative_spec,
)
from mindspeed_llm.signals import exit_on_signals, worker_signals

logger = logging.getLogger(__name__)

BATCH_ROWS = 1000
TASK_CHARS = 1 << 20  # characters of text per tokenizer task (the last ones finish close together)
# Tasks handed out before the main process loads the HF tokenizer (about 5 CPU s): work for the workers
# meanwhile (a fast engine tokenizes a task in about 0.15 s).
FIRST_PENDING = 32
_MAX_SKIPPED_SHOWN = 10

# A worker's encoding: a ``tokenizers`` backend, or (BackendSpec.hf_path) the HF tokenizer's own call.
_worker_backend = None
_worker_hf: DocumentTokenizer | None = None
_worker_spec: BackendSpec | None = None
_worker_reported = False  # whether this worker has sent its backend (speculative specs)
_worker_failed: str | None = None  # why the backend could not be built (an initializer must not raise)


def _init_worker(spec: BackendSpec, threads: int) -> None:
    global _worker_backend, _worker_hf, _worker_spec, _worker_reported, _worker_failed
    worker_signals()  # Ctrl-C is the main process's; its stop_pool() ends workers quietly
    limit_tokenizer_threads(threads)
    _worker_spec, _worker_reported, _worker_failed = spec, False, None
    _worker_hf = _worker_backend = None
    try:
        _worker_backend = spec.build(threads)
        if spec.hf_path is not None:
            _worker_hf = DocumentTokenizer(spec.hf_path)
            _worker_hf._backend_built = True  # its own call, as the main process chose
    except Exception as exc:  # noqa: BLE001 - a failing initializer would be restarted by the pool forever
        _worker_failed = f"{type(exc).__name__}: {exc}"


def _encode_task(task: dict[str, list[str]]) -> tuple:
    """Each key's ids as (flat ids, lengths) without EOD; with a speculative spec, the worker's first result
    also carries its backend serialized, for the main process to check; and (engine, why, mismatch): the
    engine that encoded, why not the fast one, and a sampled document's difference from the HF backend."""
    global _worker_reported
    if _worker_failed is not None:
        if _worker_spec.speculative:
            return None, None, None  # the main process runs the input again with the HF tokenizer's backend
        raise RuntimeError(f"the tokenizer worker could not build its tokenizer ({_worker_failed})")
    out = {}
    for key, texts in task.items():
        if _worker_backend is not None:
            out[key] = _worker_backend.flat_ids(texts)
        else:
            out[key] = flatten_ids(_worker_hf._ids_lists(texts))
    backend = None
    if _worker_spec.speculative and not _worker_reported:
        _worker_reported = True
        backend = _worker_backend.to_str()
    if _worker_backend is None:
        return out, backend, ("hf", "the HF tokenizer's own call", None)
    return out, backend, (_worker_backend.engine, _worker_backend.engine_note, _worker_backend.mismatch)


class _Restart(Exception):
    """The workers' encoding is not the HF tokenizer's: run again with ``spec``, nothing written yet."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.spec = spec


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _split_tasks(texts: dict[str, list[str]], num_rows: int) -> Iterator[dict[str, list[str]]]:
    """Cut one batch into tasks of about TASK_CHARS characters (long documents make small tasks)."""
    first_key = next(iter(texts))
    sizes = np.fromiter(map(len, texts[first_key]), dtype=np.int64, count=num_rows)
    start = 0
    while start < num_rows:
        budget = np.searchsorted(np.cumsum(sizes[start:]), TASK_CHARS, side="right")
        stop = start + max(1, int(budget))
        yield {key: values[start:stop] for key, values in texts.items()}
        start = stop


class TokenizerLoader:
    """The HF tokenizer of ``--tokenizer-name-or-path``, loaded on first use: the text path starts its workers
    first, so that importing transformers and loading the tokenizer overlap with tokenizing."""

    def __init__(self, path: str, append_eod: bool, tokenizer: DocumentTokenizer | None = None) -> None:
        self.path, self.append_eod, self._tokenizer = path, append_eod, tokenizer

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    def get(self) -> DocumentTokenizer:
        if self._tokenizer is None:
            self._tokenizer = DocumentTokenizer(self.path, self.append_eod)
            _log(
                f"tokenizer {self.path}: {type(self._tokenizer.hf).__name__}, vocabulary "
                f"{self._tokenizer.vocab_size} -> {self._tokenizer.dtype.name} tokens"
                + (f", EOD id {self._tokenizer.eod}" if self.append_eod else "")
            )
        return self._tokenizer


def encode_source(
    source: InputSource,
    args: argparse.Namespace,
    tokenizer: TokenizerLoader,
    prefixes: dict[str, str],
    show_progress: bool = True,
    require_tokens: bool = True,
    cpus: int | None = None,
) -> Progress:
    """Tokenize every document of ``source`` into ``prefixes[key]`` datasets (temporary names until done).

    ``require_tokens``: refuse to write a dataset without tokens (off for one ``--n-subs`` part).
    ``cpus``: the cores this run may use (default: this process's usable cores; one ``--n-subs`` part: its
    share).

    Workers start on the folder's tokenizer.json while the HF tokenizer loads here; their first result is
    checked against it (the serialized backend, then ``tokenizer(text).input_ids``) before anything is
    written, and a difference runs the input again with the HF tokenizer's own backend (or call).
    """
    spec = None if tokenizer.loaded else speculative_spec(tokenizer.path)
    if spec is None:
        spec = tokenizer.get().backend_spec()
    spec = _with_engine(spec, args.tokenizer_engine)
    while True:
        try:
            return _encode_with(source, args, tokenizer, spec, prefixes, show_progress, require_tokens, cpus)
        except _Restart as restart:
            spec = restart.spec


def _with_engine(spec: BackendSpec, engine: str) -> BackendSpec:
    return spec if spec.hf_path is not None else dataclasses.replace(spec, engine=engine)


class _EngineCheck:
    """The main process's part of the fast engine's checks: the rank condition on the merges (once per run,
    while the workers start; see :func:`mindspeed_llm.data.bpe_engine.rank_condition_failure`)."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.failure: str | None = None
        self.done = False

    def run(self) -> None:
        if self.done or self.spec.engine != "auto" or self.spec.hf_path is not None:
            return
        self.done = True
        from mindspeed_llm.data import bpe_engine

        if not bpe_engine.tiktoken_available():
            return
        try:
            tables = bpe_engine.read_tables(json.loads(self.spec.json()))
        except (bpe_engine.Ineligible, ValueError, OSError):
            return  # the workers find the same and encode with the HF backend
        self.failure = bpe_engine.rank_condition_failure(tables)


def _first_documents(flat: np.ndarray, lengths: np.ndarray, count: int) -> list[list[int]]:
    ends = np.cumsum(lengths[:count])
    return [flat[end - n:end].tolist() for end, n in zip(ends, lengths[:count])]


def _check_first_result(
    tokenizer: DocumentTokenizer, spec: BackendSpec, ids: dict | None, backend: str | None, texts: dict,
    engine: tuple | None, engine_check: _EngineCheck, show: bool,
) -> None:
    """Raise _Restart unless the workers' ids are the HF tokenizer's (see encode_source)."""
    if spec.speculative and (ids is None or backend is None
                             or not tokenizer.same_encoding(backend, spec.encode_special_tokens)):
        _log(f"{spec.json_path} alone does not encode as the HF tokenizer loaded from the folder does (its "
             "tokenizer_config.json changes it): tokenizing again with the HF tokenizer's own backend")
        raise _Restart(_with_engine(tokenizer.backend_spec(), spec.engine))
    name, why, _ = engine
    if name == "tiktoken":
        engine_check.run()
        if engine_check.failure is not None:
            _log(f"tokenizer engine: HF tokenizers, not tiktoken: {engine_check.failure}, so tiktoken's BPE "
                 "could give other ids; tokenizing again")
            raise _Restart(dataclasses.replace(spec, engine="hf"))
    if spec.hf_path is None:
        for key, values in texts.items():
            flat, lengths = ids[key]
            sample = values[:8]
            if tokenizer.check_ids(sample, _first_documents(flat, lengths, len(sample))):
                continue
            if name == "tiktoken":
                _log("tokenizer engine: HF tokenizers, not tiktoken: the first documents' ids differ from "
                     "tokenizer(text); tokenizing again")
                raise _Restart(dataclasses.replace(spec, engine="hf"))
            logger.warning("tokenizer backend differs from tokenizer(text); using tokenizer(text)")
            raise _Restart(BackendSpec(hf_path=tokenizer.path))
    if show and name == "tiktoken":
        _log(f"tokenizer engine: tiktoken (HF's ids exactly; one document in {SAMPLE_EVERY} is checked "
             "against HF tokenizers; --tokenizer-engine hf to use those alone)")
    elif show and spec.engine == "auto":
        _log(f"tokenizer engine: HF tokenizers ({why})")


def _encode_with(
    source: InputSource,
    args: argparse.Namespace,
    loader: TokenizerLoader,
    spec: BackendSpec,
    prefixes: dict[str, str],
    show_progress: bool,
    require_tokens: bool,
    cpus: int | None,
) -> Progress:
    handler = build_handler(args.handler_name, args.json_keys)
    columns = handler.input_columns(available_columns(source), source.files[0])
    writers: dict[str, IndexedDatasetWriter] = {}
    pool = None
    progress = Progress(args.log_interval)
    bar = None
    try:
        # Before the progress bar: its monitor thread would make mp_context() choose the fork server.
        plan = plan_workers(args.workers, cpus)
        if show_progress:
            _log(plan.describe())
        pool = mp_context().Pool(plan.processes, initializer=_init_worker, initargs=(spec, plan.threads))
        rows_total = total_rows(source)
        if show_progress:
            from tqdm import tqdm

            if rows_total is not None:
                bar = tqdm(total=rows_total, unit="doc", disable=None, dynamic_ncols=True)
            else:
                bar = tqdm(
                    total=total_bytes(source), unit="B", unit_scale=True, disable=None, dynamic_ncols=True
                )
        write = bar.write if bar is not None and not bar.disable else _log
        skipped_shown = 0

        def tasks() -> Iterator:
            nonlocal skipped_shown
            first = True
            for batch in iter_batches(source, columns, BATCH_ROWS, args.skip_bad_rows):
                for message in batch.skipped:
                    progress.skipped += 1
                    if skipped_shown < _MAX_SKIPPED_SHOWN:
                        skipped_shown += 1
                        write(f"skipped {message}")
                if not batch.num_rows:
                    if bar is not None and rows_total is None:
                        bar.update(batch.bytes_read)
                    continue
                texts = handler.texts(batch.columns, batch.first_row, batch.source)
                for key, values in texts.items():
                    progress.nonempty[key] = progress.nonempty.get(key, 0) + sum(1 for t in values if t)
                parts = list(_split_tasks(texts, batch.num_rows))
                for i, part in enumerate(parts):
                    yield part, (batch.bytes_read if i == len(parts) - 1 else 0, part if first else None)
                    first = False

        tokenizer = None
        engine_check = _EngineCheck(spec)

        def before_first_wait() -> None:
            loader.get()
            engine_check.run()

        for (ids, backend, engine), (input_bytes, first_texts) in ordered_results(
            pool, tasks(), 2 * plan.processes + 2, _encode_task, before_first_wait=before_first_wait,
            first_pending=FIRST_PENDING,
        ):
            if tokenizer is None:
                tokenizer = loader.get()
                _check_first_result(tokenizer, spec, ids, backend, first_texts, engine, engine_check,
                                    show_progress)
                for key, prefix in prefixes.items():
                    writers[key] = IndexedDatasetWriter(prefix, tokenizer.dtype)
            if engine[2] is not None:
                _log(f"tokenizer engine: {engine[2]}; tokenizing the whole input again with HF tokenizers "
                     "(nothing was written)")
                raise _Restart(dataclasses.replace(spec, engine="hf"))
            documents = tokens = 0
            for key, (flat, lengths) in ids.items():
                flat, lengths = tokenizer.finish(flat, lengths)
                writers[key].add_documents(flat, lengths)
                documents, tokens = len(lengths), tokens + flat.size
                progress.key_tokens[key] = progress.key_tokens.get(key, 0) + int(flat.size)
            progress.update(documents, tokens, input_bytes, write)
            if bar is not None:
                bar.update(documents if rows_total is not None else input_bytes)
        pool.close()
        pool.join()
        pool = None
        if bar is not None:
            bar.close()
            bar = None
        if progress.documents == 0:
            what = "every row was skipped as bad" if progress.skipped else "it holds no rows"
            raise PreprocessError(f"--input {args.input}: no documents to write ({what}); check the input")
        if require_tokens:
            check_tokens(progress, args, writers)
        commit_all(writers.values())
        return progress
    except BaseException:
        if pool is not None:
            stop_pool(pool)
        if bar is not None:
            bar.close()
        for writer in writers.values():
            writer.abort()
        raise


def check_tokens(
    progress: Progress, args: argparse.Namespace, writers: dict[str, IndexedDatasetWriter]
) -> None:
    """A dataset without a single token is refused: say whether the texts were empty or the tokenizer
    silent."""
    for key, writer in writers.items():
        if writer.token_count:
            continue
        nonempty = progress.nonempty.get(key, 0)
        if nonempty == 0:
            raise PreprocessError(
                f"--input {args.input}: column {key!r} is empty or null in all {progress.documents} rows, so "
                f"{os.path.basename(writer.prefix)} would hold no tokens; check --json-keys and the input"
            )
        raise PreprocessError(
            f"--tokenizer-name-or-path {args.tokenizer_name_or_path} produced no token ids for the "
            f"{nonempty} non-empty texts of column {key!r}, so {os.path.basename(writer.prefix)} would hold "
            "no tokens; check that the tokenizer matches the text"
        )


def check_output_not_input(output_prefix: str, input_files: Iterable[str], prefixes: Iterable[str]) -> None:
    """The output files (and their temporaries) must not be any input file (symlinks resolved)."""
    inputs = {os.path.realpath(f): f for f in input_files}
    for prefix in prefixes:
        for path in dataset_paths(prefix):
            real = os.path.realpath(path)
            if real in inputs:
                raise PreprocessError(
                    f"--output-prefix {output_prefix} would write {path}, which is the input "
                    f"{inputs[real]}: choose an output prefix that does not replace the input"
                )


def output_prefixes(output_prefix: str, keys: Iterable[str]) -> dict[str, str]:
    """``<output-prefix>_<key>_document`` for every key."""
    return {key: f"{output_prefix}_{key}_document" for key in keys}


def _ensure_output_dir(output_prefix: str) -> None:
    folder = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise PreprocessError(f"--output-prefix {output_prefix}: {folder} exists and is not a folder")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise PreprocessError(
                f"--output-prefix {output_prefix}: cannot create the folder {folder} ({exc.strerror}); "
                "create it or choose another prefix"
            ) from exc
        _log(f"created output folder {folder}")


def preprocess(args: argparse.Namespace) -> dict[str, str]:
    """Run the whole tokenization described by ``args``; returns key -> dataset prefix written."""
    source = discover_inputs(args.input)
    _log(f"input {args.input}: {source.describe()}")
    if args.handler_name in PAIRWISE_HANDLER_NAMES:
        return _preprocess_pairwise(source, args)
    if is_instruction_handler(args.handler_name):
        return _preprocess_instruction(source, args)
    handler = build_handler(args.handler_name, args.json_keys)
    handler.input_columns(available_columns(source), source.files[0])  # fail before any work
    check_tokenizer_path(args.tokenizer_name_or_path)
    tokenizer = TokenizerLoader(args.tokenizer_name_or_path, args.append_eod)
    _ensure_output_dir(args.output_prefix)
    prefixes = output_prefixes(args.output_prefix, handler.output_keys)
    check_output_not_input(args.output_prefix, source.files, prefixes.values())
    if args.n_subs > 1:
        progress = _encode_subsets(source, args, tokenizer.get(), prefixes)
    else:
        progress = encode_source(source, args, tokenizer, prefixes)
    if progress.skipped:
        _log(f"skipped {progress.skipped} bad rows (--skip-bad-rows)")
    _log(f"done: {progress.documents} documents, {progress.tokens} tokens ({progress.rates()})")
    for prefix in prefixes.values():
        _log(f"wrote {prefix}.bin and {prefix}.idx")
    return prefixes


def _preprocess_instruction(source: InputSource, args: argparse.Namespace) -> dict[str, str]:
    """Instruction handlers: conversations -> the three ``_packed_*_document`` datasets."""
    from mindspeed_llm.data.instruction import (
        INSTRUCTION_HANDLERS,
        instruction_prefixes,
        parse_map_keys,
        preprocess_instruction,
        summary,
    )

    handler = INSTRUCTION_HANDLERS[args.handler_name](parse_map_keys(args.map_keys))
    handler.input_columns(available_columns(source), source.files[0])  # fail before any work
    tokenizer = DocumentTokenizer(args.tokenizer_name_or_path, args.append_eod)
    _log(
        f"tokenizer {args.tokenizer_name_or_path}: {type(tokenizer.hf).__name__}, --prompt-type "
        f"{args.prompt_type}, int32 tokens and labels (-100 on prompts)"
    )
    _ensure_output_dir(args.output_prefix)
    prefixes = instruction_prefixes(args.output_prefix)
    check_output_not_input(args.output_prefix, source.files, prefixes.values())
    counts = preprocess_instruction(source, args, tokenizer, _log)
    for line in summary(counts, args):
        _log(line)
    for prefix in prefixes.values():
        _log(f"wrote {prefix}.bin and {prefix}.idx")
    return prefixes


def _preprocess_pairwise(source: InputSource, args: argparse.Namespace) -> dict[str, str]:
    """Pairwise handlers: prompts with chosen/rejected answers -> the four ``_packed_*_document`` datasets."""
    from mindspeed_llm.data.instruction_handlers import parse_map_keys
    from mindspeed_llm.data.pairwise import PAIRWISE_HANDLERS, pairwise_prefixes, preprocess_pairwise, summary

    handler = PAIRWISE_HANDLERS[args.handler_name](parse_map_keys(args.map_keys))
    handler.input_columns(available_columns(source), source.files[0])  # fail before any work
    tokenizer = DocumentTokenizer(args.tokenizer_name_or_path, args.append_eod)
    _log(f"tokenizer {args.tokenizer_name_or_path}: {type(tokenizer.hf).__name__}, --prompt-type "
         f"{args.prompt_type}, int32 tokens and labels (-100 before each answer)")
    _ensure_output_dir(args.output_prefix)
    prefixes = pairwise_prefixes(args.output_prefix)
    check_output_not_input(args.output_prefix, source.files, prefixes.values())
    counts = preprocess_pairwise(source, args, tokenizer, _log)
    for line in summary(counts, args):
        _log(line)
    for prefix in prefixes.values():
        _log(f"wrote {prefix}.bin and {prefix}.idx")
    return prefixes


# ---------------------------------------------------------------- --n-subs


def _split_files(files: list[str], parts: int) -> list[list[str]]:
    """``parts`` contiguous, non-empty groups of files with about equal total size."""
    sizes = [os.path.getsize(f) for f in files]
    total = max(sum(sizes), 1)
    groups: list[list[str]] = [[]]
    done = 0
    for i, (path, size) in enumerate(zip(files, sizes)):
        must_split = len(files) - i <= parts - len(groups)
        if groups[-1] and len(groups) < parts and (must_split or done >= total * len(groups) / parts):
            groups.append([])
        groups[-1].append(path)
        done += size
    return groups


def _subset_main(
    source: InputSource, args: argparse.Namespace, tokenizer, prefixes, queue, cpus: int
) -> None:
    # Its own signal owner: on the parent's SIGTERM it ends its tokenizer pool and removes its files itself.
    with exit_on_signals():
        _run_subset(source, args, tokenizer, prefixes, queue, cpus)


def _run_subset(source: InputSource, args: argparse.Namespace, tokenizer, prefixes, queue, cpus: int) -> None:
    try:
        loaded = TokenizerLoader(tokenizer.path, tokenizer.append_eod, tokenizer)
        progress = encode_source(source, args, loaded, prefixes, show_progress=False, require_tokens=False,
                                 cpus=cpus)
        queue.put(("ok", progress.documents, progress.tokens, progress.input_bytes, progress.skipped,
                   progress.nonempty, progress.key_tokens))
    except (PreprocessError, OutputWriteError) as exc:
        queue.put(("error", type(exc).__name__, str(exc)))
    except BaseException as exc:  # report, the parent cleans up
        queue.put(("error", "PreprocessError", f"{type(exc).__name__}: {exc}"))


def _encode_subsets(
    source: InputSource, args: argparse.Namespace, tokenizer: DocumentTokenizer, prefixes: dict[str, str]
) -> Progress:
    if len(source.files) < args.n_subs:
        raise PreprocessError(
            f"--n-subs {args.n_subs}: the input has {len(source.files)} file(s) and subsets are whole "
            f"files; use --n-subs {len(source.files)} or less (or shard the input)"
        )
    groups = _split_files(source.files, args.n_subs)
    # Each subset's own arguments: the tokenizer workers shared out among the subsets (args stays as parsed).
    sub_args = argparse.Namespace(**{**vars(args), "workers": max(1, args.workers // len(groups))})
    ctx = mp_context()
    queue = ctx.Queue()
    subs = []
    sub_prefixes = [{k: f"{p}.sub{i}" for k, p in prefixes.items()} for i in range(len(groups))]
    share = max(1, usable_cpus() // len(groups))  # each subset's cores: processes x threads fit in them
    _log(f"--n-subs {len(groups)}: per subset, {plan_workers(sub_args.workers, share).describe()}")
    try:
        for i, files in enumerate(groups):
            proc = ctx.Process(
                target=_subset_main,
                args=(InputSource(source.format, files), sub_args, tokenizer, sub_prefixes[i], queue, share),
            )
            proc.start()
            subs.append(proc)
        progress = Progress(args.log_interval)
        errors = []
        for _ in subs:
            status, *rest = queue.get()
            if status == "error":
                errors.append(rest)
            else:
                progress.documents += rest[0]
                progress.tokens += rest[1]
                progress.input_bytes += rest[2]
                progress.skipped += rest[3]
                progress.add_counts(rest[4], rest[5])
        for proc in subs:
            proc.join()
        if errors:
            kind, message = errors[0]
            raise (OutputWriteError if kind == "OutputWriteError" else PreprocessError)(message)
        writers: dict[str, IndexedDatasetWriter] = {}
        try:
            for key, prefix in prefixes.items():
                writers[key] = IndexedDatasetWriter(prefix, tokenizer.dtype)
                for parts in sub_prefixes:
                    writers[key].append_dataset(parts[key])
            check_tokens(progress, args, writers)
            commit_all(writers.values())
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return progress
    finally:
        for proc in subs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for parts in sub_prefixes:
            for prefix in parts.values():
                remove_stale_temporaries(prefix)  # of parts that were ended by a signal
                for path in dataset_paths(prefix):
                    if os.path.exists(path):
                        os.remove(path)


# ---------------------------------------------------------------- --merge-group-keys


def _check_earlier_merge(target: str, inputs: list[str], key: str) -> None:
    """A target among the inputs is replaced only when it is an earlier merge of exactly these inputs."""
    if not os.path.exists(target + ".idx"):
        return
    earlier = read_index(target)
    documents = sum(read_index(p).document_indices.size - 1 for p in inputs)
    if earlier.document_indices.size - 1 != documents:
        raise PreprocessError(
            f"--output-prefix: {target}.bin/.idx is in the --input folder and is not an earlier merge of the "
            f"other _{key} datasets ({earlier.document_indices.size - 1} documents, they hold {documents}): "
            "merging would replace an input; choose an --output-prefix outside the --input folder"
        )


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def merge_datasets(args: argparse.Namespace) -> dict[str, str]:
    """Merge mode: concatenate the datasets of each key found in the --input folder, in name order."""
    folder = args.input
    if not os.path.isdir(folder):
        raise PreprocessError(
            f"--input {folder}: --merge-group-keys needs a folder holding the .bin/.idx datasets to merge"
        )
    _ensure_output_dir(args.output_prefix)
    written = {}
    for key in args.merge_group_keys:
        target = (
            f"{args.output_prefix}_{key}"
            if key.endswith("_document")
            else f"{args.output_prefix}_{key}_document"
        )
        names = []
        for entry in os.listdir(folder):
            if not entry.endswith(".idx"):
                continue
            stem = entry[:-4]
            full = os.path.join(folder, stem)
            if os.path.realpath(full) == os.path.realpath(target):
                continue  # the output of an earlier merge into this folder (checked below)
            if stem.endswith((f"_{key}_document", f"_{key}")) and os.path.exists(full + ".bin"):
                names.append(stem)
        if not names:
            raise PreprocessError(
                f"--merge-group-keys {key}: no dataset in {folder} ends in _{key}_document or _{key} "
                "(with both .bin and .idx); check the key and the folder"
            )
        names.sort(key=_natural_key)
        _check_earlier_merge(target, [os.path.join(folder, n) for n in names], key)
        dtype = read_index(os.path.join(folder, names[0])).dtype
        writer = IndexedDatasetWriter(target, dtype)
        try:
            for name in names:
                writer.append_dataset(os.path.join(folder, name))
            if writer.token_count == 0:
                raise PreprocessError(
                    f"--merge-group-keys {key}: the datasets {', '.join(names)} in {folder} hold no tokens, "
                    f"so {os.path.basename(target)} would be empty; rebuild them"
                )
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        _log(f"merged {len(names)} datasets ({', '.join(names)}) into {target}.bin/.idx: "
             f"{writer.document_count} documents, {writer.token_count} tokens")
        written[key] = target
    return written
