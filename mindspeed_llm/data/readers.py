"""Streaming readers for the six input formats: parquet, csv, json, jsonl, txt, arrow.

Every reader yields :class:`RowBatch` objects holding only the columns asked for, as Python lists,
a bounded number of rows at a time, so memory does not grow with the input. Rows that cannot be
read (bytes that are not UTF-8, a JSON line that does not parse, a missing key) raise
:class:`~mindspeed_llm.data.errors.PreprocessError` naming file and line/row, or are skipped and
counted with ``skip_bad_rows``.

Formats follow HF ``datasets``' loaders: ``.txt`` is one document per line (``str.splitlines``,
line breaks dropped); ``.json`` is a JSON array of objects or JSON lines; ``.arrow`` is the Arrow
IPC stream format that ``datasets`` writes (the IPC file format is read too).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from mindspeed_llm.data.errors import PreprocessError

logger = logging.getLogger(__name__)

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".txt": "txt",
    ".arrow": "arrow",
}
TXT_COLUMN = "text"
JSON_FORMATS = ("json", "jsonl")  # records, each with its own keys
# Side files `datasets.Dataset.save_to_disk` writes next to its .arrow shards.
_ARROW_SIDE_FILES = {"dataset_info.json", "state.json"}
_CSV_BLOCK = 8 << 20
_JSON_CHUNK = 4 << 20


@dataclass
class InputSource:
    """The files to read, all of one format, in order."""

    format: str
    files: list[str]

    def describe(self) -> str:
        names = [os.path.basename(f) for f in self.files]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} files)" if len(names) > 5 else "")
        return f"{self.format}: {shown}"


@dataclass
class RowBatch:
    """Some rows of the input: column name -> values, plus where they came from."""

    columns: dict[str, list]
    num_rows: int
    source: str
    first_row: int  # 1-based row (or line) number of the first row in `source`
    bytes_read: int = 0  # input bytes consumed since the previous batch, where known
    skipped: list[str] = field(default_factory=list)  # "file:row: reason" for rows skipped


def detect_format(path: str) -> str | None:
    """The format name for a file extension, or None."""
    return FORMATS.get(os.path.splitext(path)[1].lower())


def discover_inputs(path: str) -> InputSource:
    """Resolve ``--input`` (a file or a folder of one format) into an :class:`InputSource`."""
    known = ", ".join(sorted(FORMATS))
    if not os.path.exists(path):
        raise PreprocessError(f"--input {path}: no such file or folder; check the path")
    if os.path.isfile(path):
        fmt = detect_format(path)
        if fmt is None:
            raise PreprocessError(f"--input {path}: unknown format; expected a file ending in one of {known}")
        if os.path.getsize(path) == 0:
            raise PreprocessError(f"--input {path}: the file is empty")
        return InputSource(fmt, [path])
    entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
    by_format: dict[str, list[str]] = {}
    for entry in entries:
        full = os.path.join(path, entry)
        fmt = detect_format(entry)
        if fmt is not None and os.path.isfile(full):
            by_format.setdefault(fmt, []).append(full)
    if "arrow" in by_format and "json" in by_format:
        side = [f for f in by_format["json"] if os.path.basename(f) in _ARROW_SIDE_FILES]
        by_format["json"] = [f for f in by_format["json"] if f not in side]
        if not by_format["json"]:
            del by_format["json"]
    if not by_format:
        raise PreprocessError(f"--input {path}: the folder holds no input files (expected {known})")
    if len(by_format) > 1:
        found = "; ".join(f"{len(v)} {k}" for k, v in sorted(by_format.items()))
        raise PreprocessError(
            f"--input {path}: the folder mixes formats ({found}); put one format per folder "
            "or pass a single file"
        )
    fmt, files = next(iter(by_format.items()))
    nonempty = [f for f in files if os.path.getsize(f) > 0]
    if not nonempty:
        raise PreprocessError(f"--input {path}: every {fmt} file in the folder is empty")
    return InputSource(fmt, nonempty)


def available_columns(source: InputSource) -> list[str]:
    """Column names of the first file (JSON: keys of the first record)."""
    path = source.files[0]
    fmt = source.format
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if fmt == "arrow":
            return list(_open_arrow(path).schema.names)
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                return next(csv.reader(f), [])
        if fmt == "txt":
            return [TXT_COLUMN]
        for json_path in source.files:
            for batch in _iter_json(json_path, fmt, columns=None, batch_rows=1, skip_bad_rows=True):
                if batch.num_rows:
                    return list(batch.columns)
        raise PreprocessError(f"--input {path}: no JSON object found (empty input); check the file")
    except PreprocessError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise PreprocessError(f"--input {path}: cannot read it as {fmt} ({_first_line(exc)})") from exc


def total_rows(source: InputSource) -> int | None:
    """Number of rows when the format records it (parquet), else None."""
    if source.format != "parquet":
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in source.files)


def total_bytes(source: InputSource) -> int:
    """Total size of the input files."""
    return sum(os.path.getsize(f) for f in source.files)


def iter_batches(
    source: InputSource, columns: list[str], batch_rows: int = 1000, skip_bad_rows: bool = False,
    optional: Collection[str] = (),
) -> Iterator[RowBatch]:
    """Yield the requested columns of every row, file after file, ``batch_rows`` rows at a time.

    ``optional``: JSON keys a record may lack (None in that row) instead of being a bad row."""
    for path in source.files:
        fmt = source.format
        try:
            if fmt == "parquet":
                yield from _iter_parquet(path, columns, batch_rows, skip_bad_rows)
            elif fmt == "arrow":
                yield from _iter_arrow(path, columns, batch_rows, skip_bad_rows)
            elif fmt == "csv":
                yield from _iter_csv(path, columns, batch_rows, skip_bad_rows)
            elif fmt == "txt":
                yield from _iter_txt(path, batch_rows, skip_bad_rows)
            else:
                yield from _iter_json(path, fmt, columns, batch_rows, skip_bad_rows, optional)
        except PreprocessError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise PreprocessError(f"--input {path}: cannot read it as {fmt} ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _bad_row(path: str, where: str, reason: str, skip: bool, skipped: list[str]) -> None:
    message = f"{path}:{where}: {reason}"
    if not skip:
        raise PreprocessError(f"--input {message}; fix the row or pass --skip-bad-rows to skip such rows")
    skipped.append(message)


# ---------------------------------------------------------------- Arrow-backed formats


def _decode_utf8(values: list, bad: set[int]) -> list:
    """Decode byte strings as UTF-8; a value that is not valid UTF-8 becomes None and its row joins
    ``bad``."""
    decoded = []
    for i, raw in enumerate(values):
        try:
            decoded.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.add(i)
            decoded.append(None)
    return decoded


def _arrow_columns(
    table: pa.RecordBatch | pa.Table, columns: list[str], path: str, first_row: int, skip: bool
) -> RowBatch:
    """Convert Arrow columns to Python lists; rows with bytes that are not UTF-8 are bad rows."""
    skipped: list[str] = []
    bad: set[int] = set()
    out: dict[str, list] = {}
    for name in columns:
        array = table.column(name)
        if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
            try:
                array = array.cast(pa.large_string())  # validates UTF-8 in C++
            except pa.ArrowInvalid:
                out[name] = _decode_utf8(array.to_pylist(), bad)
                continue
        try:
            out[name] = array.to_pylist()
        except UnicodeDecodeError:
            out[name] = _decode_utf8(array.cast(pa.large_binary()).to_pylist(), bad)
    num_rows = table.num_rows
    if bad:
        for i in sorted(bad):
            _bad_row(path, f"row {first_row + i}", "text is not valid UTF-8", skip, skipped)
        keep = [i for i in range(num_rows) if i not in bad]
        out = {k: [v[i] for i in keep] for k, v in out.items()}
        num_rows = len(keep)
    return RowBatch(out, num_rows, path, first_row, skipped=skipped)


def _iter_parquet(path: str, columns: list[str], batch_rows: int, skip: bool) -> Iterator[RowBatch]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    _require_columns(path, parquet.schema_arrow.names, columns)
    row = 1
    size = os.path.getsize(path)
    total = max(parquet.metadata.num_rows, 1)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
        out = _arrow_columns(batch, columns, path, row, skip)
        out.bytes_read = size * batch.num_rows // total
        row += batch.num_rows
        yield out


def _open_arrow(path: str) -> pa.RecordBatchStreamReader | pa.RecordBatchFileReader:
    try:
        return pa.ipc.open_stream(pa.OSFile(path))
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.OSFile(path))


def _iter_arrow(path: str, columns: list[str], batch_rows: int, skip: bool) -> Iterator[RowBatch]:
    reader = _open_arrow(path)
    _require_columns(path, reader.schema.names, columns)
    if isinstance(reader, pa.RecordBatchFileReader):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    row = 1
    for batch in batches:
        batch = batch.select(columns)
        for start in range(0, batch.num_rows, batch_rows):
            part = batch.slice(start, batch_rows)
            out = _arrow_columns(part, columns, path, row, skip)
            out.bytes_read = part.nbytes
            row += part.num_rows
            yield out


class _CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes handed out (for progress on csv)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        self.count += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _iter_csv(path: str, columns: list[str], batch_rows: int, skip: bool) -> Iterator[RowBatch]:
    import pyarrow.csv as pacsv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    _require_columns(path, header, columns)
    counting = _CountingFile(path)
    reader = pacsv.open_csv(
        counting,
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        # binary, so that bytes which are not UTF-8 are reported per row instead of failing the block
        convert_options=pacsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.large_binary() for c in columns}
        ),
    )
    row = 1
    seen = 0
    try:
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                part = batch.slice(start, batch_rows)
                out = _arrow_columns(part, columns, path, row, skip)
                out.bytes_read, seen = counting.count - seen, counting.count
                row += part.num_rows
                yield out
    finally:
        counting.close()


# ---------------------------------------------------------------- Python-parsed formats


def _iter_txt(path: str, batch_rows: int, skip: bool) -> Iterator[RowBatch]:
    docs: list[str] = []
    skipped: list[str] = []
    first = 1
    line_no = 0
    consumed = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):  # noqa: B007 - line_no used after the loop
            consumed += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad_row(path, f"line {line_no}", "text is not valid UTF-8", skip, skipped)
                continue
            docs.extend(text.splitlines() or [""])
            if len(docs) >= batch_rows:
                yield RowBatch({TXT_COLUMN: docs}, len(docs), path, first, consumed, skipped)
                docs, skipped, consumed, first = [], [], 0, line_no + 1
    if docs or skipped:
        yield RowBatch({TXT_COLUMN: docs}, len(docs), path, first, consumed, skipped)


def _json_records(path: str, fmt: str) -> Iterator[tuple[int, object, int]]:
    """(line number, parsed record or a JSONDecodeError/UnicodeDecodeError, bytes consumed)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if fmt == "json" and head.startswith(b"["):
        yield from _json_array_records(path)
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                # surrogateescape keeps parsing going; such strings are caught by _valid_utf8
                yield line_no, json.loads(raw.decode("utf-8", errors="surrogateescape")), len(raw)
            except json.JSONDecodeError as exc:
                yield line_no, exc, len(raw)


class _BrokenArray(json.JSONDecodeError):
    """A syntax error in a JSON array: unlike a bad JSON line, reading cannot go on after it."""


def _json_array_records(path: str) -> Iterator[tuple[int, object, int]]:
    """Stream the elements of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    text, pos, line, consumed, eof = "", 0, 1, 0, False
    state = "start"  # start: expect '['; first: value or ']'; value: a value; sep: ',' or ']'; done
    with open(path, "rb") as f:
        while True:
            blank = _WHITESPACE.match(text, pos).end()
            line += text.count("\n", pos, blank)
            pos = blank
            need_more = pos == len(text)
            if not need_more and state in ("first", "value") and text[pos] != "]":
                try:
                    record, end = decoder.raw_decode(text, pos)
                    need_more = end == len(text) and not eof  # a number may go on in the next chunk
                except json.JSONDecodeError as exc:
                    if eof:
                        yield line, _BrokenArray(exc.msg, exc.doc, exc.pos), consumed
                        return
                    need_more = True
            if need_more:
                if eof:
                    if state != "done":
                        yield line, _BrokenArray("unexpected end of file in JSON array", text, pos), consumed
                    return
                chunk = f.read(_JSON_CHUNK)
                consumed += len(chunk)
                eof = not chunk
                text = text[pos:] + utf8.decode(chunk, final=eof)
                pos = 0
                continue
            char = text[pos]
            if state == "done":
                yield line, _BrokenArray("extra data after the JSON array", text, pos), consumed
                return
            if state == "start" or (state == "sep" and char not in ",]"):
                expected = "'['" if state == "start" else "',' or ']'"
                if char != "[" or state != "start":
                    yield line, _BrokenArray(f"expected {expected}", text, pos), consumed
                    return
                state, pos = "first", pos + 1
                continue
            if char == "]" and state in ("first", "sep"):
                state, pos = "done", pos + 1
                continue
            if state == "sep":  # char == ","
                state, pos = "value", pos + 1
                continue
            if char == "]":  # state == "value": "[..., ]"
                yield line, _BrokenArray("trailing comma in JSON array", text, pos), consumed
                return
            yield line, record, consumed
            consumed = 0
            line += text.count("\n", pos, end)
            pos, state = end, "sep"


_WHITESPACE = re.compile(r"[ \t\r\n]*")


def _valid_utf8(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _iter_json(
    path: str, fmt: str, columns: list[str] | None, batch_rows: int, skip_bad_rows: bool,
    optional: Collection[str] = (),
) -> Iterator[RowBatch]:
    out: dict[str, list] = {c: [] for c in columns} if columns is not None else {}
    skipped: list[str] = []
    num_rows = 0
    first = None
    consumed = 0
    for line_no, record, nbytes in _json_records(path, fmt):
        consumed += nbytes
        if first is None:
            first = line_no
        where = f"line {line_no}"
        if isinstance(record, _BrokenArray):
            raise PreprocessError(
                f"--input {path}:{where}: invalid JSON array ({record.msg}); the rest of the file "
                "cannot be read, so fix the file (or convert it to JSON lines)"
            )
        if isinstance(record, json.JSONDecodeError):
            _bad_row(path, where, f"invalid JSON ({record.msg})", skip_bad_rows, skipped)
            continue
        if not isinstance(record, dict):
            _bad_row(
                path, where, f"expected a JSON object, got {type(record).__name__}", skip_bad_rows, skipped
            )
            continue
        if columns is None:
            return_columns = list(record)
            yield RowBatch({c: [record[c]] for c in return_columns}, 1, path, line_no)
            return
        missing = [c for c in columns if c not in record and c not in optional]
        if missing:
            found = ", ".join(record) or "none"
            _bad_row(path, where, f"no key {missing[0]!r} (keys found: {found})", skip_bad_rows, skipped)
            continue
        values = [record.get(c) for c in columns]
        if not all(_valid_utf8(v) for v in values):
            _bad_row(path, where, "text is not valid UTF-8", skip_bad_rows, skipped)
            continue
        for c, v in zip(columns, values):
            out[c].append(v)
        num_rows += 1
        if num_rows >= batch_rows:
            yield RowBatch(out, num_rows, path, first, consumed, skipped)
            out, skipped, num_rows, first, consumed = {c: [] for c in columns}, [], 0, None, 0
    if columns is not None and (num_rows or skipped):
        yield RowBatch(out, num_rows, path, first or 1, consumed, skipped)


def _require_columns(path: str, found: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        raise PreprocessError(
            f"--input {path}: no column {missing[0]!r} (columns found: {', '.join(found) or 'none'}); "
            "choose columns with --json-keys or a --handler-name that fits the data"
        )
