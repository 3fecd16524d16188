"""Readers: streaming JSON arrays across chunk boundaries, txt line semantics, folder discovery."""

from __future__ import annotations

import json

import pytest

from mindspeed_llm.data import readers
from mindspeed_llm.data.errors import PreprocessError


@pytest.mark.parametrize("chunk", [1, 3, 7, 4 << 20])
def test_json_array_streams_across_chunks(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers, "_JSON_CHUNK", chunk)
    rows = [
        {"text": "héllo 🙂 中文\n\"q\" " * (i % 4), "n": 1234567 * i, "f": [1.5, None, True]}
        for i in range(40)
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    source = readers.InputSource("json", [str(path)])
    got = {"text": [], "n": []}
    for batch in readers.iter_batches(source, ["text", "n"], batch_rows=6):
        for key in got:
            got[key] += batch.columns[key]
    assert got["text"] == [r["text"] for r in rows]
    assert got["n"] == [r["n"] for r in rows]


@pytest.mark.parametrize("content, message", [
    ('[{"text": "a"},]', "trailing comma"),
    ('[{"text": "a"} {"text": "b"}]', "expected ',' or ']'"),
    ('[{"text": "a"}', "unexpected end"),
    ('[{"text": "a"}] x', "extra data"),
])
def test_json_array_syntax_errors_stop_even_with_skip_bad_rows(tmp_path, content, message):
    (tmp_path / "a.json").write_text(content)
    source = readers.InputSource("json", [str(tmp_path / "a.json")])
    for skip in (False, True):
        with pytest.raises(PreprocessError, match=message):
            for _ in readers.iter_batches(source, ["text"], skip_bad_rows=skip):
                pass


def test_txt_lines_follow_str_splitlines(tmp_path):
    content = "a\r\nb\n\nc\rd\u2028e\nlast"
    (tmp_path / "t.txt").write_bytes(content.encode("utf-8"))
    source = readers.InputSource("txt", [str(tmp_path / "t.txt")])
    docs = [d for b in readers.iter_batches(source, ["text"], batch_rows=2) for d in b.columns["text"]]
    assert docs == content.replace("\r\n", "\n").splitlines()


def test_discover_folder_takes_one_format_in_name_order(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "README.md", ".hidden.jsonl"]:
        (tmp_path / name).write_text('{"text": "x"}\n')
    source = readers.discover_inputs(str(tmp_path))
    assert source.format == "jsonl"
    assert [p.rsplit("/", 1)[-1] for p in source.files] == ["a.jsonl", "b.jsonl"]


def test_unknown_extension(tmp_path):
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(PreprocessError, match="unknown format"):
        readers.discover_inputs(str(tmp_path / "data.xml"))
