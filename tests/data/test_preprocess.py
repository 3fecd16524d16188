"""preprocess_data end to end: every format, workers 1 and 2, read back through megatron-core."""

from __future__ import annotations

import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.data.conftest import ROWS
from tests.data.helpers import (
    FORMAT_WRITERS,
    dataset_bytes,
    expected_documents,
    listing,
    read_documents,
    run,
    write_jsonl,
    write_parquet,
)
from tests.helpers.launch import StartedScript

TEXTS = [r["text"] for r in ROWS]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("append_eod", [False, True])
def test_all_formats_give_identical_bytes_and_hf_ids(tmp_path, bpe_tokenizer, workers, append_eod):
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    expected = expected_documents(hf, TEXTS, append_eod)
    outputs = {}
    for fmt, write in FORMAT_WRITERS.items():
        src = write(ROWS, str(tmp_path / f"in_{fmt.replace('-', '_')}"))
        prefix = tmp_path / "out" / fmt
        extra = ["--append-eod"] if append_eod else []
        rc = run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", prefix,
                 "--tokenizer-type", "PretrainedFromHF", "--workers", workers, "--log-interval", 1, *extra)
        assert rc == 0, fmt
        out = f"{prefix}_text_document"
        assert read_documents(out) == expected, fmt
        outputs[fmt] = dataset_bytes(out)
    reference = outputs["parquet"]
    for fmt, data in outputs.items():
        assert data == reference, f"{fmt} differs from parquet"


def test_workers_and_batches_keep_document_order(tmp_path, bpe_tokenizer, monkeypatch, capsys):
    """Any --workers gives the same bytes; more workers than usable cores run as many as there are cores."""
    import mindspeed_llm.data.preprocess as pre

    monkeypatch.setattr(pre, "BATCH_ROWS", 7)
    monkeypatch.setattr(pre, "TASK_CHARS", 300)  # many small tasks in flight
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "ünï", "中文", "fox", "\n", '"q"', ""]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(300)]
    src = write_jsonl([{"text": t} for t in texts], str(tmp_path / "in"))
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    results = []
    cores = len(os.sched_getaffinity(0))
    for workers in (1, 2, cores + 3):
        prefix = tmp_path / f"w{workers}"
        capsys.readouterr()
        assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", prefix,
                   "--workers", workers, "--append-eod") == 0
        results.append(dataset_bytes(f"{prefix}_text_document"))
        assert read_documents(f"{prefix}_text_document") == expected_documents(hf, texts, True)
        processes = min(workers, cores)
        assert f"tokenizing with {processes} worker process(es) x {max(1, cores // processes)} tokenizer" \
            in capsys.readouterr().err
    assert results[0] == results[1] == results[2]


def test_pool_started_beside_another_python_thread_uses_the_fork_server(tmp_path, bpe_tokenizer):
    """A fork copies the locks other threads hold at that instant (a pool forked inside a pytest-xdist worker
    once hung): with another Python thread running, the workers come from the fork server, load the tokenizer
    by path and write the same documents; a lone main thread still forks."""
    import threading

    from mindspeed_llm.data.pool import mp_context

    script = tmp_path / "start_method.py"  # ``python SCRIPT.py``: forked from a preloaded interpreter
    script.write_text("import mindspeed_llm.data.pool as p\nprint(p.mp_context().get_start_method())\n")
    alone = StartedScript(script).result()
    assert alone.stdout.strip() == "fork", (
        alone.stderr
    )  # (this pytest process may run a leftover tqdm monitor)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert mp_context().get_start_method() == "forkserver"
        src = write_jsonl(ROWS, str(tmp_path / "in"))
        prefix = tmp_path / "o"
        assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", prefix,
                   "--workers", 2, "--append-eod") == 0
    finally:
        stop.set()
        other.join()
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert read_documents(f"{prefix}_text_document") == expected_documents(hf, TEXTS, True)


def test_large_vocabulary_writes_int32(tmp_path, large_vocab_tokenizer):
    src = write_parquet(ROWS, str(tmp_path / "in"))
    prefix = tmp_path / "big"
    assert run("--input", src, "--tokenizer-name-or-path", large_vocab_tokenizer, "--output-prefix", prefix,
               "--append-eod") == 0
    raw = (tmp_path / "big_text_document.idx").read_bytes()
    assert raw[17] == 4  # int32 dtype code
    hf = AutoTokenizer.from_pretrained(large_vocab_tokenizer)
    docs = read_documents(f"{prefix}_text_document")
    assert docs == expected_documents(hf, TEXTS, True)
    assert max(max(d) for d in docs if d) > 65535


def test_bos_tokenizer_keeps_empty_document_tokens(tmp_path, bos_tokenizer):
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bos_tokenizer, "--output-prefix", tmp_path / "o",
               "--append-eod") == 0
    hf = AutoTokenizer.from_pretrained(bos_tokenizer)
    docs = read_documents(str(tmp_path / "o_text_document"))
    assert docs == expected_documents(hf, TEXTS, True)
    assert docs[4] == [hf.bos_token_id, hf.eos_token_id]  # the empty text


def test_several_json_keys_write_one_dataset_each(tmp_path, bpe_tokenizer):
    src = write_parquet(ROWS, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
               "--json-keys", "text", "other") == 0
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert read_documents(str(tmp_path / "o_text_document")) == expected_documents(hf, TEXTS, False)
    others = [r["other"] for r in ROWS]
    assert read_documents(str(tmp_path / "o_other_document")) == expected_documents(hf, others, False)


def test_txt_is_one_document_per_line(tmp_path, bpe_tokenizer):
    content = "first line\nsecond, with ünï\r\n\nfourth \"quoted\"\nlast without newline"
    (tmp_path / "in.txt").write_bytes(content.encode("utf-8"))
    assert run("--input", tmp_path / "in.txt", "--tokenizer-name-or-path", bpe_tokenizer,
               "--output-prefix", tmp_path / "o", "--append-eod") == 0
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    lines = ["first line", "second, with ünï", "", 'fourth "quoted"', "last without newline"]
    assert read_documents(str(tmp_path / "o_text_document")) == expected_documents(hf, lines, True)


def test_folder_of_shards_in_name_order(tmp_path, bpe_tokenizer, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_parquet(ROWS[:3], str(folder / "part-00000"))
    write_parquet(ROWS[3:], str(folder / "part-00001"))
    assert (
        run("--input", folder, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o")
        == 0
    )
    assert "part-00000.parquet, part-00001.parquet" in capsys.readouterr().err
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert read_documents(str(tmp_path / "o_text_document")) == expected_documents(hf, TEXTS, False)


def test_alpaca_handler_joins_instruction_input_output(tmp_path, bpe_tokenizer):
    rows = [
        {"instruction": "Give a word.", "input": "", "output": "Fox."},
        {"instruction": "Translate.", "input": "café", "output": "coffee"},
    ]
    src = write_jsonl(rows, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
               "--handler-name", "AlpacaStylePretrainHandler") == 0
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    texts = ["Give a word.\n\nFox.", "Translate.\n\ncafé\n\ncoffee"]
    assert read_documents(str(tmp_path / "o_text_document")) == expected_documents(hf, texts, False)


def test_alpaca_handler_prefers_text_column(tmp_path, bpe_tokenizer):
    rows = [{"instruction": "i", "input": "", "output": "o", "text": "the full text"}]
    src = write_parquet(rows, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
               "--handler-name", "AlpacaStylePretrainHandler") == 0
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert read_documents(str(tmp_path / "o_text_document")) == expected_documents(
        hf, ["the full text"], False
    )


def test_sharegpt_handler_renders_turns(tmp_path, bpe_tokenizer):
    rows = [
        {
            "system": "Be brief.",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}],
        },
        {"system": None, "conversations": [{"from": "human", "value": "Bye"}]},
    ]
    for write in (write_jsonl, write_parquet):
        src = write(rows, str(tmp_path / "in"))
        prefix = tmp_path / f"o_{write.__name__}"
        assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", prefix,
                   "--handler-name", "SharegptStylePretrainHandler") == 0
        hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
        texts = ["Be brief.\n\nhuman: Hi?\n\ngpt: Hello.", "human: Bye"]
        assert read_documents(f"{prefix}_text_document") == expected_documents(hf, texts, False)


def test_merge_group_keys_concatenates_in_name_order(tmp_path, bpe_tokenizer):
    parts = tmp_path / "parts"
    for i, rows in enumerate([ROWS[:2], ROWS[2:5], ROWS[5:]]):
        src = write_jsonl(rows, str(tmp_path / f"in{i}"))
        assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer,
                   "--output-prefix", parts / f"shard{i}", "--append-eod") == 0
    assert run("--input", parts, "--output-prefix", tmp_path / "merged", "--merge-group-keys", "text") == 0
    # merging into the input folder, twice: the earlier output is not taken as an input
    for _ in range(2):
        assert run("--input", parts, "--output-prefix", parts / "all", "--merge-group-keys", "text") == 0
    assert dataset_bytes(str(parts / "all_text_document")) == dataset_bytes(
        str(tmp_path / "merged_text_document")
    )
    src = write_jsonl(ROWS, str(tmp_path / "all"))
    assert (
        run(
            "--input",
            src,
            "--tokenizer-name-or-path",
            bpe_tokenizer,
            "--output-prefix",
            tmp_path / "whole",
            "--append-eod",
        )
        == 0
    )
    assert dataset_bytes(str(tmp_path / "merged_text_document")) == dataset_bytes(
        str(tmp_path / "whole_text_document")
    )


@pytest.mark.slow
def test_n_subs_equals_single_pass(tmp_path, bpe_tokenizer):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        write_jsonl(ROWS[i * 3 : i * 3 + 3], str(folder / f"part{i}"))
    assert (
        run(
            "--input",
            folder,
            "--tokenizer-name-or-path",
            bpe_tokenizer,
            "--output-prefix",
            tmp_path / "one",
            "--append-eod",
        )
        == 0
    )
    assert (
        run(
            "--input",
            folder,
            "--tokenizer-name-or-path",
            bpe_tokenizer,
            "--output-prefix",
            tmp_path / "subs",
            "--append-eod",
            "--n-subs",
            3,
            "--workers",
            3,
        )
        == 0
    )
    assert dataset_bytes(str(tmp_path / "one_text_document")) == dataset_bytes(
        str(tmp_path / "subs_text_document")
    )
    assert listing(tmp_path).count("subs_text_document.bin") == 1
    assert not [n for n in listing(tmp_path) if ".sub" in n or ".tmp" in n]


def test_normalizer_in_tokenizer_is_applied(tmp_path, nfc_tokenizer):
    """NFC is skipped only for texts it leaves unchanged (ASCII, characters below U+0300): texts that it
    changes (a combining accent, Hangul jamo) in the same batch still get the normalized ids."""
    from tokenizers import Tokenizer

    texts = ["cafe\u0301 (decomposed)", "café (composed)", "A\u030angstro\u0308m", "plain ascii", "naïve ā",
             "\u1100\u1161 jamo", "", "The quick brown fox"]
    src = write_jsonl([{"text": t} for t in texts], str(tmp_path / "in"))
    assert (
        run("--input", src, "--tokenizer-name-or-path", nfc_tokenizer, "--output-prefix", tmp_path / "o") == 0
    )
    hf = AutoTokenizer.from_pretrained(nfc_tokenizer)
    docs = read_documents(str(tmp_path / "o_text_document"))
    assert docs == expected_documents(hf, texts, False)
    assert docs[0][:4] == hf("café").input_ids[:4]
    # Teeth: without the normalizer the changed texts would get other ids.
    bare = Tokenizer.from_file(os.path.join(nfc_tokenizer, "tokenizer.json"))
    bare.normalizer = None
    for i in (0, 2, 5):
        assert bare.encode(texts[i]).ids != docs[i], texts[i]


def test_workers_start_on_tokenizer_json_and_rerun_when_the_hf_tokenizer_differs(tmp_path, bpe_tokenizer,
                                                                                   capsys):
    """Workers tokenize with the folder's tokenizer.json while transformers loads; when tokenizer_config.json
    changes the encoding (here: an added token), the input is tokenized again with the HF tokenizer's."""
    import json
    import shutil

    from tokenizers import Tokenizer

    texts = [r["text"] for r in ROWS]
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "a",
               "--workers", 2, "--append-eod") == 0
    assert "tokenizing again" not in capsys.readouterr().err  # the folder's tokenizer.json was kept
    folder = tmp_path / "tok_added"
    shutil.copytree(bpe_tokenizer, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.setdefault("added_tokens_decoder", {})["400"] = {
        "content": "quick brown", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert run("--input", src, "--tokenizer-name-or-path", folder, "--output-prefix", tmp_path / "b",
               "--workers", 2, "--append-eod") == 0
    assert "tokenizing again with the HF tokenizer's own backend" in capsys.readouterr().err
    hf = AutoTokenizer.from_pretrained(folder)
    docs = read_documents(str(tmp_path / "b_text_document"))
    assert docs == expected_documents(hf, texts, True)
    assert 400 in docs[-1]
    # Teeth: tokenizer.json alone splits the added token.
    assert 400 not in Tokenizer.from_file(str(folder / "tokenizer.json")).encode(texts[-1]).ids


@pytest.mark.slow
def test_entry_script_as_the_seed_runs_it(tmp_path, bpe_tokenizer):
    """The seed's command line, as a subprocess: output names, exit status 0; a bad input gives exit 2."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "dataset").mkdir()
    src = write_parquet(ROWS, str(tmp_path / "dataset" / "train-00000-of-00001-a09b74b3ef9c3b56"))
    cmd = [sys.executable, os.path.join(root, "preprocess_data.py"), "--input", src,
           "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", "./dataset/alpaca",
           "--tokenizer-type", "PretrainedFromHF", "--workers", "4", "--log-interval", "1000"]
    done = StartedScript(*cmd[1:], cwd=tmp_path).result()
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "dataset"))[:2] == [
        "alpaca_text_document.bin",
        "alpaca_text_document.idx",
    ]
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert read_documents(str(tmp_path / "dataset" / "alpaca_text_document")) == expected_documents(
        hf, TEXTS, False
    )
    bad = StartedScript(*cmd[1:3], "missing.parquet", *cmd[4:], cwd=tmp_path).result()
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --input missing.parquet")


def test_log_interval_prints_rates(tmp_path, bpe_tokenizer, capsys, monkeypatch):
    import mindspeed_llm.data.preprocess as pre

    monkeypatch.setattr(pre, "BATCH_ROWS", 2)
    src = write_jsonl(ROWS, str(tmp_path / "in"))
    assert run("--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", tmp_path / "o",
               "--log-interval", 4) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("processed ")]
    assert [ln.split()[1] for ln in lines] == ["4", "8"]
    assert all("docs/s" in ln and "tokens/s" in ln and "MB/s" in ln for ln in lines)


@pytest.mark.slow
def test_qwen25_tokenizer_on_alpaca_parquet(tmp_path, qwen25_tokenizer):
    """The seed's case: Qwen2.5's tokenizer (151,665 entries, NFC, added tokens) on an alpaca-style
    parquet."""
    import pyarrow.parquet as pq

    from mindspeed_llm.quickstart.assets import write_alpaca_parquet

    tok = qwen25_tokenizer
    src = tmp_path / "train-00000-of-00001-a09b74b3ef9c3b56.parquet"
    write_alpaca_parquet(src, max_rows=300)
    assert run("--input", src, "--tokenizer-name-or-path", tok, "--output-prefix", tmp_path / "alpaca",
               "--tokenizer-type", "PretrainedFromHF", "--workers", 2, "--append-eod") == 0
    assert (tmp_path / "alpaca_text_document.idx").read_bytes()[17] == 4  # int32: vocabulary >= 65500
    hf = AutoTokenizer.from_pretrained(tok)
    texts = pq.read_table(src).column("text").to_pylist()
    assert read_documents(str(tmp_path / "alpaca_text_document")) == expected_documents(hf, texts, True)
