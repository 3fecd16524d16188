"""The streamed indexed-dataset writer: .idx bytes per the format, equality with megatron-core."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from mindspeed_llm.data.indexed_writer import IndexedDatasetWriter, optimal_token_dtype, read_index


def _write(prefix: str, docs: list[list[int]], dtype) -> IndexedDatasetWriter:
    writer = IndexedDatasetWriter(prefix, dtype)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    flat = np.array([t for d in docs for t in d], dtype=dtype)
    writer.add_documents(flat, lengths)
    writer.finalize()
    return writer


def _megatron_bytes(prefix: str, docs: list[list[int]], dtype) -> tuple[bytes, bytes]:
    """What Megatron-LM's tools/preprocess_data.py writes: add_document(ids, [len]) or ([], [])."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.dtype(dtype).type)
    for doc in docs:
        builder.add_document(doc, [len(doc)] if doc else [])
    builder.finalize(prefix + ".idx")
    with open(prefix + ".bin", "rb") as b, open(prefix + ".idx", "rb") as i:
        return b.read(), i.read()


@pytest.mark.parametrize("dtype, code", [(np.uint16, 8), (np.int32, 4)])
def test_idx_header_and_arrays_byte_by_byte(tmp_path, dtype, code):
    docs = [[5, 6, 7], [], [9], [1, 2]]
    _write(str(tmp_path / "d"), docs, dtype)
    raw = (tmp_path / "d.idx").read_bytes()
    item = np.dtype(dtype).itemsize
    assert raw[0:9] == b"MMIDIDX\x00\x00"
    assert raw[9:17] == (1).to_bytes(8, "little")  # version
    assert raw[17] == code  # dtype code
    assert raw[18:26] == (3).to_bytes(8, "little")  # sequences: the empty document has none
    assert raw[26:34] == (5).to_bytes(8, "little")  # documents + 1
    off = 34
    assert raw[off : off + 12] == struct.pack("<3i", 3, 1, 2)  # int32 lengths
    off += 12
    assert raw[off : off + 24] == struct.pack("<3q", 0, 3 * item, 4 * item)  # int64 byte offsets
    off += 24
    assert raw[off : off + 40] == struct.pack("<5q", 0, 1, 1, 2, 3)  # int64 document indices
    assert len(raw) == off + 40
    assert (tmp_path / "d.bin").read_bytes() == np.array([5, 6, 7, 9, 1, 2], dtype=dtype).tobytes()


@pytest.mark.parametrize("vocab", [400, 70000])
def test_writer_bytes_equal_megatron_builder(tmp_path, vocab):
    rng = np.random.default_rng(0)
    dtype = optimal_token_dtype(vocab)
    docs = [rng.integers(0, vocab, size=n).tolist() for n in rng.integers(0, 50, size=200)]
    docs[3] = []
    writer = IndexedDatasetWriter(str(tmp_path / "ours"), dtype)
    for start in range(0, len(docs), 37):  # several add_documents calls
        part = docs[start : start + 37]
        writer.add_documents(
            np.array([t for d in part for t in d], dtype=dtype), np.array([len(d) for d in part])
        )
    writer.finalize()
    ref_bin, ref_idx = _megatron_bytes(str(tmp_path / "ref"), docs, dtype)
    assert (tmp_path / "ours.bin").read_bytes() == ref_bin
    assert (tmp_path / "ours.idx").read_bytes() == ref_idx
    ds = IndexedDataset(str(tmp_path / "ours"))
    nonempty = [d for d in docs if d]
    assert len(ds) == len(nonempty)
    for i, doc in enumerate(nonempty):
        assert ds[i].tolist() == doc


def test_optimal_dtype_threshold():
    assert optimal_token_dtype(65499) == np.uint16
    assert optimal_token_dtype(65500) == np.int32


def test_abort_leaves_no_files(tmp_path):
    writer = IndexedDatasetWriter(str(tmp_path / "d"), np.uint16)
    writer.add_documents(np.array([1, 2], dtype=np.uint16), np.array([2]))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_unfinished_writer_leaves_no_final_names(tmp_path):
    writer = IndexedDatasetWriter(str(tmp_path / "d"), np.uint16)
    writer.add_documents(np.array([1, 2], dtype=np.uint16), np.array([2]))
    names = {p.name for p in tmp_path.iterdir()}
    assert "d.idx" not in names and "d.bin" not in names
    writer.abort()


def test_append_dataset_concatenates(tmp_path):
    a = [[1, 2], [], [3]]
    b = [[4], [5, 6, 7]]
    _write(str(tmp_path / "a"), a, np.uint16)
    _write(str(tmp_path / "b"), b, np.uint16)
    merged = IndexedDatasetWriter(str(tmp_path / "m"), np.uint16)
    merged.append_dataset(str(tmp_path / "a"))
    merged.append_dataset(str(tmp_path / "b"))
    merged.finalize()
    _write(str(tmp_path / "all"), a + b, np.uint16)
    assert (tmp_path / "m.idx").read_bytes() == (tmp_path / "all.idx").read_bytes()
    assert (tmp_path / "m.bin").read_bytes() == (tmp_path / "all.bin").read_bytes()
    index = read_index(str(tmp_path / "m"))
    assert index.document_indices.tolist() == [0, 1, 1, 2, 3, 4]


def test_rewriting_replaces_an_existing_dataset(tmp_path):
    _write(str(tmp_path / "d"), [[1, 2, 3], [4]], np.uint16)
    _write(str(tmp_path / "d"), [[7]], np.uint16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]
    ds = IndexedDataset(str(tmp_path / "d"))
    assert len(ds) == 1 and ds[0].tolist() == [7]
