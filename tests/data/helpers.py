"""Shared helpers for the data tests: write rows in every input format, read datasets back."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from megatron.core.datasets.indexed_dataset import IndexedDataset

from mindspeed_llm.data.cli import main

FORMAT_WRITERS = {}


def _writer(name):
    def register(fn):
        FORMAT_WRITERS[name] = fn
        return fn

    return register


@_writer("parquet")
def write_parquet(rows: list[dict], path: str) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path + ".parquet", row_group_size=3)
    return path + ".parquet"


@_writer("jsonl")
def write_jsonl(rows: list[dict], path: str) -> str:
    with open(path + ".jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path + ".jsonl"


@_writer("json")
def write_json_array(rows: list[dict], path: str) -> str:
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)
    return path + ".json"


@_writer("json-lines")
def write_json_lines(rows: list[dict], path: str) -> str:
    with open(path + ".json", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path + ".json"


@_writer("csv")
def write_csv(rows: list[dict], path: str) -> str:
    with open(path + ".csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path + ".csv"


@_writer("arrow")
def write_arrow_stream(rows: list[dict], path: str) -> str:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(path + ".arrow", "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=3):
            writer.write_batch(batch)
    return path + ".arrow"


@_writer("arrow-file")
def write_arrow_file(rows: list[dict], path: str) -> str:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(path + ".arrow", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    return path + ".arrow"


def run(*argv: str) -> int:
    """Run preprocess_data.py's main in this process."""
    return main([str(a) for a in argv])


def read_documents(prefix: str) -> list[list[int]]:
    """Every document of a dataset through megatron-core's IndexedDataset (empty ones as [])."""
    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    docs = []
    for d in range(len(bounds) - 1):
        parts = [ds[s] for s in range(bounds[d], bounds[d + 1])]
        docs.append(np.concatenate(parts).tolist() if parts else [])
    return docs


def expected_documents(tokenizer, texts: list[str], append_eod: bool) -> list[list[int]]:
    """What Megatron-LM's tool stores: tokenizer(text).input_ids, + EOS for non-empty documents."""
    out = []
    for text in texts:
        ids = tokenizer(text).input_ids
        out.append(ids + [tokenizer.eos_token_id] if append_eod and ids else ids)
    return out


def dataset_bytes(prefix: str) -> tuple[bytes, bytes]:
    with open(prefix + ".bin", "rb") as b, open(prefix + ".idx", "rb") as i:
        return b.read(), i.read()


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))
