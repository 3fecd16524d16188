"""Writer for megatron-core's indexed dataset (``.bin`` tokens + ``.idx`` index), streamed with numpy.

The bytes are exactly what ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` writes
(and so what Megatron-LM's ``tools/preprocess_data.py`` writes), but memory stays flat: tokens go
straight to the ``.bin`` file and sequence lengths are spilled to a scratch file, so the index is
assembled at the end in fixed-size chunks. Everything is written under temporary names and renamed
at :meth:`IndexedDatasetWriter.finalize`; an interrupted run leaves no ``.idx`` that looks complete.

``.idx`` layout (little endian)::

    b"MMIDIDX\\x00\\x00"   magic, 9 bytes
    u64  version = 1
    u8   dtype code (megatron DType: uint16 = 8, int32 = 4, ...)
    u64  sequence count S
    u64  document count D (number of documents + 1)
    i32  sequence lengths [S]
    i64  sequence byte offsets into .bin [S]
    i64  document indices [D] (sequence index where each document starts; first 0, last S)
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mindspeed_llm.data.errors import OutputWriteError, PreprocessError
from mindspeed_llm.io_errors import describe_os_error
from mindspeed_llm.signals import process_alive, signals_deferred

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
# Megatron's DType.optimal_dtype threshold: uint16 only for vocabularies below 65500 entries.
UINT16_VOCAB_LIMIT = 65500
_CHUNK = 1 << 20  # entries per chunk when assembling the index


def optimal_token_dtype(vocab_size: int) -> np.dtype:
    """Token dtype Megatron uses for a vocabulary: uint16 below 65500 entries, else int32."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def dataset_paths(prefix: str) -> tuple[str, str]:
    """The ``.bin`` and ``.idx`` paths of a dataset prefix."""
    return prefix + ".bin", prefix + ".idx"


def index_header(dtype: np.dtype, sequence_count: int, document_count: int) -> bytes:
    """The fixed-size head of an ``.idx`` file (magic, version, dtype code, counts)."""
    return (
        INDEX_MAGIC
        + struct.pack("<Q", INDEX_VERSION)
        + struct.pack("<B", DTYPE_CODES[np.dtype(dtype)])
        + struct.pack("<Q", sequence_count)
        + struct.pack("<Q", document_count)
    )


class IndexedDatasetWriter:
    """Stream documents into ``<prefix>.bin/.idx``; one sequence per non-empty document.

    Empty documents are kept as documents with no sequence, exactly as Megatron-LM's tool does
    (``add_document([], [])``): the document index repeats the previous entry.

    A failed write (disk full, read-only folder) raises :class:`OutputWriteError`; the caller then
    calls :meth:`abort`, which removes every temporary file even when closing them fails again.
    """

    def __init__(self, prefix: str, dtype: np.dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise PreprocessError(f"unsupported token dtype {self.dtype} for {prefix}")
        self.bin_path, self.idx_path = dataset_paths(prefix)
        remove_stale_temporaries(prefix)
        pid = os.getpid()
        self._bin_tmp = f"{self.bin_path}.tmp{pid}"
        self._idx_tmp = f"{self.idx_path}.tmp{pid}"
        self._len_tmp = f"{self.prefix}.lengths.tmp{pid}"
        self._doc_tmp = f"{self.prefix}.docs.tmp{pid}"
        self._handles = []
        self.sequence_count = 0
        self.document_count = 0
        self.token_count = 0
        self._closed = False
        self._prepared = False
        with self._writing(self.bin_path):
            self._bin = self._open(self._bin_tmp)
            self._lengths = self._open(self._len_tmp)
            self._docs = self._open(self._doc_tmp)  # sequence index at the end of each document

    def _open(self, path: str):
        handle = open(path, "wb")  # noqa: SIM115 - closed by finalize/abort
        self._handles.append(handle)
        return handle

    @contextlib.contextmanager
    def _writing(self, path: str) -> Iterator[None]:
        """OSError while writing -> one line naming the file; temporary files are removed."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise OutputWriteError(
                f"writing {path} failed ({describe_os_error(exc)}); temporary files removed, no earlier "
                f"{os.path.basename(self.prefix)}.bin/.idx was changed"
            ) from None

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat token array and each document's length (0 = empty)."""
        with self._writing(self.bin_path):
            self._add_documents(tokens, lengths)

    def _add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != tokens.size:
            raise ValueError(f"lengths sum {int(lengths.sum())} != token count {tokens.size}")
        if tokens.dtype != self.dtype:
            tokens = tokens.astype(self.dtype)
        self._bin.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        nonempty = lengths[lengths > 0]
        self._lengths.write(nonempty.astype(np.int32).tobytes())
        ends = self.sequence_count + np.cumsum(lengths > 0, dtype=np.int64)
        self._docs.write(ends.tobytes())
        self.sequence_count += int(nonempty.size)
        self.document_count += int(lengths.size)
        self.token_count += int(tokens.size)

    def append_dataset(self, prefix: str) -> None:
        """Append an existing dataset (same dtype) at the end, keeping its document boundaries."""
        index = read_index(prefix)
        if index.dtype != self.dtype:
            raise PreprocessError(
                f"{prefix}.idx holds {index.dtype} tokens but the merged dataset is {self.dtype}: "
                "merge only datasets made with tokenizers of the same vocabulary size class"
            )
        check_bin_size(prefix, index)
        with open(prefix + ".bin", "rb") as src:
            while True:
                try:
                    chunk = src.read(64 << 20)
                except OSError as exc:
                    raise PreprocessError(f"{prefix}.bin cannot be read ({exc.strerror})") from None
                if not chunk:
                    break
                with self._writing(self.bin_path):
                    self._bin.write(chunk)
        with self._writing(self.bin_path):
            self._lengths.write(index.sequence_lengths.astype(np.int32).tobytes())
            self._docs.write((self.sequence_count + index.document_indices[1:].astype(np.int64)).tobytes())
        self.sequence_count += int(index.sequence_lengths.size)
        self.document_count += int(index.document_indices.size - 1)
        self.token_count += int(index.sequence_lengths.sum(dtype=np.int64))

    def finalize(self) -> None:
        """Write the index and move both files to their final names (``.bin`` first, ``.idx`` last)."""
        self.prepare()
        self.commit()

    def prepare(self) -> None:
        """Close the token file and write the complete index under its temporary name."""
        with self._writing(self.idx_path):
            self._prepare()
        self._prepared = True

    def _prepare(self) -> None:
        for handle in self._handles:
            handle.close()
        itemsize = np.int64(self.dtype.itemsize)
        with self._open(self._idx_tmp) as idx:
            idx.write(index_header(self.dtype, self.sequence_count, self.document_count + 1))
            self._copy_chunks(self._len_tmp, np.int32, idx)
            offset = np.int64(0)
            for lengths in self._read_chunks(self._len_tmp, np.int32):
                ends = np.cumsum(lengths.astype(np.int64) * itemsize) + offset
                starts = np.empty_like(ends)
                starts[0] = offset
                starts[1:] = ends[:-1]
                idx.write(starts.tobytes())
                offset = ends[-1]
            idx.write(np.zeros(1, dtype=np.int64).tobytes())
            self._copy_chunks(self._doc_tmp, np.int64, idx)

    def commit(self) -> None:
        """Rename the prepared files into place; SIGINT/SIGTERM wait until both are renamed."""
        if not self._prepared:
            raise RuntimeError("commit() before prepare()")
        with self._writing(self.bin_path), signals_deferred():
            # An old .idx goes first, so at no moment does a complete-looking .idx sit beside a .bin
            # it does not describe.
            self._remove(self.idx_path)
            os.replace(self._bin_tmp, self.bin_path)
            os.replace(self._idx_tmp, self.idx_path)
        self._remove(self._len_tmp, self._doc_tmp)
        self._closed = True

    def abort(self) -> None:
        """Close and delete everything written so far (no output is left behind)."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            try:
                handle.close()
            except OSError:  # flushing the buffer fails again on a full disk; the file goes anyway
                pass
        self._discard(self._bin_tmp, self._idx_tmp, self._len_tmp, self._doc_tmp)

    @staticmethod
    def _read_chunks(path: str, dtype: type) -> Iterator[np.ndarray]:
        with open(path, "rb") as src:
            while True:
                chunk = np.fromfile(src, dtype=dtype, count=_CHUNK)
                if chunk.size == 0:
                    return
                yield chunk

    @classmethod
    def _copy_chunks(cls, path: str, dtype: type, dst) -> None:
        for chunk in cls._read_chunks(path, dtype):
            dst.write(chunk.tobytes())

    @staticmethod
    def _remove(*paths: str) -> None:
        for path in paths:
            if os.path.lexists(path):  # a read-only file system says EROFS even for a missing file
                os.remove(path)

    @staticmethod
    def _discard(*paths: str) -> None:
        """Best-effort removal while cleaning up after an error (the first error is the one reported)."""
        for path in paths:
            with contextlib.suppress(OSError):
                IndexedDatasetWriter._remove(path)


_TEMP_SUFFIX = re.compile(r"\.(?:bin|idx|lengths|docs)\.tmp(\d+)")


def remove_stale_temporaries(prefix: str) -> None:
    """Remove temporary files of ``prefix`` left by a run that was killed (kill -9): their PID is gone."""
    folder, base = os.path.split(os.path.abspath(prefix))
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if not name.startswith(base):
                continue
            m = _TEMP_SUFFIX.fullmatch(name[len(base):])
            if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
                IndexedDatasetWriter._discard(os.path.join(folder, name))


def check_bin_size(prefix: str, index: IndexArrays) -> None:
    """The ``.bin`` must hold exactly the tokens its ``.idx`` describes."""
    want = int(index.sequence_lengths.sum(dtype=np.int64)) * index.dtype.itemsize
    try:
        got = os.path.getsize(prefix + ".bin")
    except OSError as exc:
        raise PreprocessError(f"{prefix}.bin cannot be read ({exc.strerror}): rebuild the dataset") from None
    if got != want:
        raise PreprocessError(
            f"{prefix}.bin holds {got} bytes but {prefix}.idx describes {want}: the pair does not match "
            "(interrupted copy?); rebuild the dataset"
        )


@dataclass
class IndexArrays:
    """The arrays of an ``.idx`` file."""

    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray


def read_index(prefix: str) -> IndexArrays:
    """Read ``<prefix>.idx`` with numpy (checks the magic and version)."""
    path = prefix + ".idx"
    with open(path, "rb") as f:
        head = f.read(len(INDEX_MAGIC) + 8 + 1 + 8 + 8)
        if len(head) < 34 or head[:9] != INDEX_MAGIC:
            raise PreprocessError(f"{path} is not a megatron indexed dataset index (bad magic)")
        (version,) = struct.unpack("<Q", head[9:17])
        if version != INDEX_VERSION:
            raise PreprocessError(f"{path}: index version {version}, expected {INDEX_VERSION}")
        code = head[17]
        if code not in CODE_DTYPES:
            raise PreprocessError(f"{path}: unknown dtype code {code}")
        sequence_count, document_count = struct.unpack("<QQ", head[18:34])
        lengths = np.fromfile(f, dtype=np.int32, count=sequence_count)
        pointers = np.fromfile(f, dtype=np.int64, count=sequence_count)
        documents = np.fromfile(f, dtype=np.int64, count=document_count)
    if lengths.size != sequence_count or documents.size != document_count:
        raise PreprocessError(f"{path} is truncated: rebuild the dataset")
    return IndexArrays(CODE_DTYPES[code], lengths, pointers, documents)
