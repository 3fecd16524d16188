"""Bad input gives one clear error line (exit 2) and leaves no output behind."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from tests.data.conftest import ROWS
from tests.data.helpers import (
    expected_documents,
    listing,
    read_documents,
    run,
    write_csv,
    write_jsonl,
    write_parquet,
)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert err[-1].startswith("error: "), err
    return err[-1]


def _out_files(folder) -> list[str]:
    return [n for n in listing(folder) if n.startswith("o")] if folder.exists() else []


def test_missing_input(tmp_path, bpe_tokenizer, capsys):
    rc = run("--input", tmp_path / "nope.parquet", "--tokenizer-name-or-path", bpe_tokenizer,
             "--output-prefix", tmp_path / "o")
    assert rc == 2
    msg = _error(capsys)
    assert "--input" in msg and "nope.parquet" in msg and "no such file" in msg
    assert _out_files(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_input(tmp_path, bpe_tokenizer, capsys, content):
    (tmp_path / "empty.jsonl").write_bytes(content)
    rc = run("--input", tmp_path / "empty.jsonl", "--tokenizer-name-or-path", bpe_tokenizer,
             "--output-prefix", tmp_path / "o")
    assert rc == 2
    assert "empty" in _error(capsys)
    assert _out_files(tmp_path) == []


def test_empty_parquet(tmp_path, bpe_tokenizer, capsys):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    rc = run("--input", tmp_path / "e.parquet", "--tokenizer-name-or-path", bpe_tokenizer,
             "--output-prefix", tmp_path / "o")
    assert rc == 2
    assert "no documents" in _error(capsys)
    assert _out_files(tmp_path) == []


def test_mixed_folder(tmp_path, bpe_tokenizer, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(ROWS, str(folder / "a"))
    write_parquet(ROWS, str(folder / "b"))
    rc = run("--input", folder, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o")
    assert rc == 2
    msg = _error(capsys)
    assert "mixes formats" in msg and "jsonl" in msg and "parquet" in msg


def test_arrow_folder_ignores_save_to_disk_side_files(tmp_path, bpe_tokenizer):
    from tests.data.helpers import write_arrow_stream

    folder = tmp_path / "saved"
    folder.mkdir()
    write_arrow_stream(ROWS, str(folder / "data-00000-of-00001"))
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text("{}")
    assert run("--input", folder, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o") == 0


@pytest.mark.parametrize("writer", [write_parquet, write_jsonl, write_csv])
def test_missing_text_column_lists_columns(tmp_path, bpe_tokenizer, capsys, writer):
    src = writer([{"content": "x", "id": "1"}], str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o")
    assert rc == 2
    msg = _error(capsys)
    assert "'text'" in msg and "content" in msg and "id" in msg and "--json-keys" in msg
    assert _out_files(tmp_path) == []


def _bad_utf8_inputs(tmp_path):
    good = [json.dumps({"text": f"row {i} ok"}).encode() for i in range(5)]
    lines = good[:2] + [b'{"text": "bad \xff\xfe bytes"}'] + good[2:]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "in.txt").write_bytes(b"row 0 ok\nrow 1 ok\nbad \xff\xfe bytes\nrow 2 ok\nrow 3 ok\nrow 4 ok\n")
    (tmp_path / "in.csv").write_bytes(
        b'text\n"row 0 ok"\n"row 1\nok"\n"bad \xff\xfe bytes"\nrow 2 ok\nrow 3 ok\nrow 4 ok\n'
    )
    table = pa.table({"text": pa.array([b"row 0 ok", b"row 1 ok", b"bad \xff", b"row 2 ok"], pa.binary())})
    pq.write_table(table, tmp_path / "in.parquet")
    return {
        "in.jsonl": ("line 3", ["row 0 ok", "row 1 ok", "row 2 ok", "row 3 ok", "row 4 ok"]),
        "in.txt": ("line 3", ["row 0 ok", "row 1 ok", "row 2 ok", "row 3 ok", "row 4 ok"]),
        "in.csv": ("row 3", ["row 0 ok", "row 1\nok", "row 2 ok", "row 3 ok", "row 4 ok"]),
        "in.parquet": ("row 3", ["row 0 ok", "row 1 ok", "row 2 ok"]),
    }


def test_non_utf8_reports_row_and_skip_bad_rows_continues(tmp_path, bpe_tokenizer, capsys):
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    for name, (where, kept) in _bad_utf8_inputs(tmp_path).items():
        out = tmp_path / f"out_{name.replace('.', '_')}"
        rc = run("--input", tmp_path / name, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o")
        assert rc == 2, name
        msg = _error(capsys)
        assert f"{name}:{where}" in msg and "UTF-8" in msg and "--skip-bad-rows" in msg, msg
        assert _out_files(out) == [], name
        rc = run("--input", tmp_path / name, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o",
                 "--skip-bad-rows")
        assert rc == 0, name
        assert f"skipped {tmp_path / name}:{where}" in capsys.readouterr().err
        assert read_documents(str(out / "o_text_document")) == expected_documents(hf, kept, False), name


def test_invalid_json_line(tmp_path, bpe_tokenizer, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": oops}\n')
    rc = run("--input", tmp_path / "in.jsonl", "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o")
    assert rc == 2
    assert "line 2" in _error(capsys)


def test_bad_row_late_in_input_leaves_nothing(tmp_path, bpe_tokenizer, capsys, monkeypatch):
    import mindspeed_llm.data.preprocess as pre

    monkeypatch.setattr(pre, "BATCH_ROWS", 10)
    lines = [json.dumps({"text": f"document {i}"}).encode() for i in range(200)] + [b'{"text": "\xff"}']
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    rc = run("--input", tmp_path / "in.jsonl", "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o",
             "--workers", 2)
    assert rc == 2
    assert "line 201" in _error(capsys)
    assert listing(out) == []


def test_output_folder_is_created(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    out = tmp_path / "new" / "deeper"
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o") == 0
    assert "created output folder" in capsys.readouterr().err
    assert listing(out) == ["o_text_document.bin", "o_text_document.idx"]


def test_tokenizer_folder_missing(tmp_path, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", tmp_path / "no_tok", "--output-prefix", tmp_path / "o")
    assert rc == 2
    msg = _error(capsys)
    assert "--tokenizer-name-or-path" in msg and "no_tok" in msg and "no such folder" in msg


def test_tokenizer_folder_without_tokenizer(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", tmp_path / "model", "--output-prefix", tmp_path / "o")
    assert rc == 2
    assert "holds no tokenizer" in _error(capsys)


def test_append_eod_without_eos(tmp_path, no_eos_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", no_eos_tokenizer, "--output-prefix", tmp_path / "o",
             "--append-eod")
    assert rc == 2
    msg = _error(capsys)
    assert "--append-eod" in msg and "EOS" in msg
    assert _out_files(tmp_path) == []


def test_output_prefix_with_document_suffix(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer,
             "--output-prefix", tmp_path / "alpaca_text_document")
    assert rc == 2
    msg = _error(capsys)
    assert "_text_document" in msg and f"--output-prefix {tmp_path / 'alpaca'}" in msg


def test_instruction_handler_is_rejected(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    with pytest.raises(SystemExit) as exit_info:
        run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
            "--handler-name", "AlpacaStyleInstructionHandler")
    assert exit_info.value.code == 2
    assert "--handler-name" in capsys.readouterr().err


def test_n_subs_larger_than_file_count(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
             "--n-subs", 2)
    assert rc == 2
    assert "--n-subs 2" in _error(capsys)
    assert _out_files(tmp_path) == []
