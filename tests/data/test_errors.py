"""Bad input gives one clear error line (exit 2) and leaves no output behind."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from tests.data.conftest import ROWS
from tests.data.helpers import (
    dataset_bytes,
    expected_documents,
    listing,
    read_documents,
    run,
    write_csv,
    write_jsonl,
    write_parquet,
)
from tests.helpers.launch import StartedScript, with_file_size_limit
from tests.helpers.paths import REPO_ROOT
from tests.tool_process import (
    error_line,
    leftovers,
    read_only_dir,
    signal_when,
    tree_digest,
)

PREPROCESS = REPO_ROOT / "preprocess_data.py"


def _error(capsys) -> str:
    text = capsys.readouterr().err
    err = text.strip().splitlines()
    assert err, "no error printed"
    assert err[-1].startswith("error: "), err
    assert "Traceback" not in text and len([ln for ln in err if ln.startswith("error:")]) == 1, text
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
    assert (
        run("--input", folder, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o")
        == 0
    )


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
    (tmp_path / "in.txt").write_bytes(
        b"row 0 ok\nrow 1 ok\nbad \xff\xfe bytes\nrow 2 ok\nrow 3 ok\nrow 4 ok\n"
    )
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
        rc = run(
            "--input",
            tmp_path / name,
            "--tokenizer-name-or-path",
            bpe_tokenizer,
            "--output-prefix",
            out / "o",
        )
        assert rc == 2, name
        msg = _error(capsys)
        assert f"{name}:{where}" in msg and "UTF-8" in msg and "--skip-bad-rows" in msg, msg
        assert _out_files(out) == [], name
        rc = run(
            "--input",
            tmp_path / name,
            "--tokenizer-name-or-path",
            bpe_tokenizer,
            "--output-prefix",
            out / "o",
            "--skip-bad-rows",
        )
        assert rc == 0, name
        assert f"skipped {tmp_path / name}:{where}" in capsys.readouterr().err
        assert read_documents(str(out / "o_text_document")) == expected_documents(hf, kept, False), name


def test_invalid_json_line(tmp_path, bpe_tokenizer, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": oops}\n')
    rc = run(
        "--input",
        tmp_path / "in.jsonl",
        "--tokenizer-name-or-path",
        bpe_tokenizer,
        "--output-prefix",
        tmp_path / "o",
    )
    assert rc == 2
    assert "line 2" in _error(capsys)


def test_bad_row_late_in_input_leaves_nothing(tmp_path, bpe_tokenizer, capsys, monkeypatch):
    import mindspeed_llm.data.preprocess as pre

    monkeypatch.setattr(pre, "BATCH_ROWS", 10)
    lines = [json.dumps({"text": f"document {i}"}).encode() for i in range(200)] + [b'{"text": "\xff"}']
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    rc = run(
        "--input",
        tmp_path / "in.jsonl",
        "--tokenizer-name-or-path",
        bpe_tokenizer,
        "--output-prefix",
        out / "o",
        "--workers",
        2,
    )
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
    rc = run(
        "--input", src, "--tokenizer-name-or-path", tmp_path / "no_tok", "--output-prefix", tmp_path / "o"
    )
    assert rc == 2
    msg = _error(capsys)
    assert "--tokenizer-name-or-path" in msg and "no_tok" in msg and "no such folder" in msg


def test_tokenizer_folder_without_tokenizer(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run(
        "--input", src, "--tokenizer-name-or-path", tmp_path / "model", "--output-prefix", tmp_path / "o"
    )
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


def test_n_subs_larger_than_file_count(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
             "--n-subs", 2)
    assert rc == 2
    assert "--n-subs 2" in _error(capsys)
    assert _out_files(tmp_path) == []


# ---- zero tokens: refused, with which column or which tokenizer -------------------------------------------
def test_all_empty_texts_are_refused(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl([{"text": ""}, {"text": ""}, {"text": ""}], str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
             "--append-eod")
    assert rc == 2
    msg = _error(capsys)
    assert (
        "column 'text' is empty or null in all 3 rows" in msg
        and "o_text_document would hold no tokens" in msg
    )
    assert _out_files(tmp_path) == []


def test_all_null_parquet_column_is_refused(tmp_path, bpe_tokenizer, capsys):
    table = pa.table({"text": pa.array([None, None], pa.string()), "other": pa.array(["a", "b"])})
    pq.write_table(table, tmp_path / "in.parquet")
    rc = run("--input", tmp_path / "in.parquet", "--tokenizer-name-or-path", bpe_tokenizer,
             "--output-prefix", tmp_path / "o", "--json-keys", "other", "text")
    assert rc == 2
    assert "column 'text' is empty or null in all 2 rows" in _error(capsys)
    assert _out_files(tmp_path) == []  # the 'other' dataset, which has tokens, is not written either


def test_tokenizer_without_ids_is_refused(tmp_path, silent_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    rc = run("--input", src, "--tokenizer-name-or-path", silent_tokenizer, "--output-prefix", tmp_path / "o")
    assert rc == 2
    msg = _error(capsys)
    assert (
        f"--tokenizer-name-or-path {silent_tokenizer} produced no token ids for the 7 non-empty texts" in msg
    )
    assert _out_files(tmp_path) == []


def test_zero_tokens_with_n_subs_is_refused_after_the_parts(tmp_path, bpe_tokenizer, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_jsonl([{"text": ""}], str(folder / f"part{i}"))
    rc = run(
        "--input",
        folder,
        "--tokenizer-name-or-path",
        bpe_tokenizer,
        "--output-prefix",
        tmp_path / "out" / "o",
        "--n-subs",
        2,
    )
    assert rc == 2
    assert "column 'text' is empty or null in all 2 rows" in _error(capsys)
    assert listing(tmp_path / "out") == []


# ---- merge: an input is never replaced; damaged .bin/.idx pairs -----------------------------------------
def _shards(tmp_path, tokenizer, n=3):
    parts = tmp_path / "parts"
    for i in range(n):
        src = write_jsonl(ROWS[i * 2:(i + 1) * 2], str(tmp_path / f"in{i}"))
        assert (
            run("--input", src, "--tokenizer-name-or-path", tokenizer, "--output-prefix", parts / f"shard{i}")
            == 0
        )
    return parts


def test_merge_onto_an_input_shard_is_refused(tmp_path, bpe_tokenizer, capsys):
    parts = _shards(tmp_path, bpe_tokenizer)
    before = dataset_bytes(str(parts / "shard0_text_document"))
    rc = run("--input", parts, "--output-prefix", parts / "shard0", "--merge-group-keys", "text")
    assert rc == 2
    msg = _error(capsys)
    assert "shard0_text_document.bin/.idx is in the --input folder and is not an earlier merge" in msg
    assert dataset_bytes(str(parts / "shard0_text_document")) == before


def test_merge_input_whose_bin_does_not_match_its_idx(tmp_path, bpe_tokenizer, capsys):
    parts = _shards(tmp_path, bpe_tokenizer)
    with open(parts / "shard1_text_document.bin", "r+b") as f:
        f.truncate(6)
    rc = run("--input", parts, "--output-prefix", tmp_path / "merged", "--merge-group-keys", "text")
    assert rc == 2
    msg = _error(capsys)
    assert f"{parts / 'shard1_text_document'}.bin holds 6 bytes but" in msg and "rebuild the dataset" in msg
    assert [n for n in listing(tmp_path) if n.startswith("merged")] == []


# ---- read-only output folder, full disk, signals, kill -9 --------------------------------------------------
def test_read_only_output_folder_keeps_the_earlier_output(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    out = tmp_path / "out"
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o") == 0
    before = tree_digest(out)
    with read_only_dir(out):
        rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o")
        assert rc == 1
        msg = _error(capsys)
        assert (
            f"writing {out / 'o_text_document.bin'} failed" in msg and "no earlier o_text_document" in msg
        ), msg
        assert tree_digest(out) == before


def _corpus(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"{ROWS[i % len(ROWS)]['text']} number {i}"}) + "\n")
    return path


@pytest.mark.slow
def test_full_disk_keeps_the_earlier_output(tmp_path, bpe_tokenizer):
    """A 64 KiB file-size limit in the child: writing the .bin fails with EFBIG as on a full disk."""
    src = _corpus(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "out"
    argv = [
        "--input",
        src,
        "--tokenizer-name-or-path",
        bpe_tokenizer,
        "--output-prefix",
        out / "o",
        "--workers",
        2,
    ]
    assert StartedScript(PREPROCESS, *argv).result().returncode == 0
    before, src_before = tree_digest(out), tree_digest(tmp_path / "in.jsonl")
    proc = StartedScript(*with_file_size_limit(PREPROCESS, 64 * 1024), *argv).result()
    line = error_line(proc.stderr)
    assert proc.returncode == 1 and f"writing {out / 'o_text_document.bin'} failed (File too large" in line, (
        line
    )
    assert tree_digest(out) == before and tree_digest(tmp_path / "in.jsonl") == src_before
    assert leftovers(tmp_path) == []


def _writing(folder):
    def check() -> bool:  # the tool's temporary .bin holds tokens: it is mid-write
        return any(
            ".bin.tmp" in n and os.path.getsize(os.path.join(folder, n)) > 0 for n in os.listdir(folder)
        )

    return check


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,word,n_subs", [(signal.SIGINT, 130, "interrupted (Ctrl-C)", 1),
                                                  (signal.SIGTERM, 143, "terminated (SIGTERM)", 1),
                                                  (signal.SIGTERM, 143, "terminated (SIGTERM)", 2),
                                                  (signal.SIGKILL, -9, None, 1)])
def test_signal_while_writing(tmp_path, bpe_tokenizer, sig, code, word, n_subs):
    """Real signals mid-write (--n-subs 2: two part processes with a tokenizer pool each); no process is
    left."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n_subs):
        _corpus(src / f"part{i}.jsonl", 30000 // n_subs)
    out = tmp_path / "out"
    out.mkdir()
    argv = [
        "--input",
        src,
        "--tokenizer-name-or-path",
        bpe_tokenizer,
        "--output-prefix",
        out / "o",
        "--workers",
        2,
        "--log-interval",
        100000,
        "--n-subs",
        n_subs,
    ]
    earlier = write_jsonl(ROWS, str(tmp_path / "small"))
    assert (
        run("--input", earlier, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o") == 0
    )
    before = tree_digest(out)
    started, processes = [], []  # the tool; its processes (workers, parts) when the signal goes

    def start() -> StartedScript:
        started.append(StartedScript(PREPROCESS, *argv))
        return started[-1]

    def writing() -> bool:
        if not _writing(out)():
            return False
        processes.extend(psutil.Process(started[-1].pid).children(recursive=True))
        return True

    rc, err = signal_when(start, writing, sig)
    assert rc == code, err
    assert processes  # its tokenizer workers were running
    if word:
        line = error_line(err)
        assert word in line and "temporary files removed" in line
        assert leftovers(tmp_path) == []
    else:  # kill -9 cannot clean up: the temporaries stay until the next run on that prefix removes them
        assert leftovers(out)
    assert tree_digest(out) == {k: v for k, v in tree_digest(out).items() if ".tmp" in k} | before
    if sig == signal.SIGKILL:
        assert StartedScript(PREPROCESS, *argv).result().returncode == 0
        assert leftovers(tmp_path) == []
    time.sleep(0.2)  # pool workers end after their parent
    assert not [p for p in processes if _alive(p)]
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(src) in " ".join(p.info["cmdline"] or [])]


def _alive(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_output_that_is_the_input_is_refused(tmp_path, bpe_tokenizer, capsys):
    """An output path that resolves to an input file (here through a symlink) is refused before any write."""
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(src, out / "o_text_document.idx")
    before = tree_digest(tmp_path)
    rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o")
    assert rc == 2
    msg = _error(capsys)
    assert f"would write {out / 'o_text_document.idx'}, which is the input {src}" in msg
    assert tree_digest(tmp_path) == before and leftovers(tmp_path) == []
