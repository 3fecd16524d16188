"""Instruction handlers: ids and labels equal transformers' apply_chat_template; packing keeps samples whole.

The reference is Qwen2.5's real tokenizer (rebuilt offline, as the quick start does) with the plain
(no tools) branch of Qwen2.5-Instruct's chat template attached. The expected prompt/answer split is
computed from ``apply_chat_template`` token ids alone: the prompt of answer *i* is the rendering of
the messages before it with ``add_generation_prompt=True``, the answer ends where the rendering up
to it ends. Written files are read back with megatron-core's ``IndexedDataset``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from transformers import AutoTokenizer

from mindspeed_llm.data.chat_templates import TEMPLATES
from tests.data.helpers import listing, run, write_jsonl, write_parquet

# Qwen2.5-Instruct's chat_template without its tools branch (the tests use no tools).
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are "
    "a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == "
    "'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}{{- "
    "'<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor "
    "%}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PAD = 151643  # <|endoftext|>, Qwen2.5's pad token


@pytest.fixture(scope="session")
def qwen_chat_tokenizer(tmp_path_factory, qwen25_tokenizer) -> str:
    folder = tmp_path_factory.mktemp("qwen25_chat")
    shutil.copytree(qwen25_tokenizer, folder, dirs_exist_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN25_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="session")
def qwen_chat_reference(qwen_chat_tokenizer):
    """transformers' tokenizer of ``qwen_chat_tokenizer``, loaded once (about 1.5 CPU s a load): the
    reference side only; the tool under test loads the folder itself on every run."""
    return AutoTokenizer.from_pretrained(qwen_chat_tokenizer)


def _chat_ids(tok, messages, generation=False) -> list[int]:
    return list(
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)["input_ids"]
    )


def expected_sample(tok, messages) -> tuple[list[int], list[int]]:
    """apply_chat_template's ids; labels = ids on each answer (its prompt rendered alone), -100 elsewhere."""
    ids = _chat_ids(tok, messages)
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, upto = _chat_ids(tok, messages[:i], generation=True), _chat_ids(tok, messages[: i + 1])
        assert ids[: len(prompt)] == prompt and ids[: len(upto)] == upto
        labels[len(prompt):len(upto)] = ids[len(prompt):len(upto)]
    return ids, labels


def read_sft(prefix) -> dict[str, list[list[int]]]:
    """The three datasets of ``prefix`` through megatron-core's IndexedDataset, one list per document."""
    out = {}
    for key in ("input_ids", "attention_mask", "labels"):
        ds = IndexedDataset(f"{prefix}_packed_{key}_document")
        assert ds.index.dtype == np.int32
        assert list(ds.document_indices) == list(range(len(ds) + 1))  # one sequence per document
        out[key] = [ds[i].tolist() for i in range(len(ds))]
    return out


ALPACA_ROWS = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "1. Eat well.\n2. Sleep.\n3. Move.",
        "system": "You are terse.",
    },
    {
        "instruction": "Translate to French",
        "input": "Good morning, café!",
        "output": "Bonjour, café !",
        "system": "",
    },
    {"instruction": "Add the numbers", "input": "2 + 2", "output": "4", "system": None},
]


def _alpaca_messages(row) -> list[dict]:
    user = "\n".join(p for p in (row["instruction"], row["input"]) if p)
    return ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


@pytest.mark.parametrize("prompt_type", ["qwen", "chat_template"])
def test_alpaca_rows_equal_apply_chat_template(tmp_path, qwen_chat_tokenizer, qwen_chat_reference,
                                               prompt_type):
    src = write_parquet(ALPACA_ROWS, str(tmp_path / "alpaca"))
    prefix = tmp_path / "out" / "alpaca"
    assert run("--input", src, "--tokenizer-name-or-path", qwen_chat_tokenizer, "--output-prefix", prefix,
               "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", prompt_type) == 0
    tok = qwen_chat_reference
    got = read_sft(prefix)
    assert len(got["input_ids"]) == len(ALPACA_ROWS)
    for k, row in enumerate(ALPACA_ROWS):
        ids, labels = expected_sample(tok, _alpaca_messages(row))
        assert got["input_ids"][k] == ids
        assert got["labels"][k] == labels
        assert got["attention_mask"][k] == [1] * len(ids)
        answer = tok.decode([t for t in labels if t != -100])
        assert answer == row["output"] + "<|im_end|>\n"  # exactly the answer is learned


SHAREGPT_TURNS = [
    ("user", "Hello! Who are you?"), ("assistant", "I am a model."),
    ("user", "What is 2+2?\nExplain."), ("assistant", "It is 4, because 2 and 2 make 4."),
    ("user", "Thanks 🙂"), ("assistant", "You're welcome."),
]


# Each form with one prompt type: the form decides the messages, the prompt type renders them (both prompt
# types render the alpaca rows, system column included); the full matrix cost two more tool runs.
@pytest.mark.parametrize("form, prompt_type", [("sharegpt", "qwen"), ("openai", "chat_template")])
def test_multi_turn_sharegpt_equals_apply_chat_template(tmp_path, qwen_chat_tokenizer, qwen_chat_reference,
                                                        form, prompt_type):
    if form == "sharegpt":
        names = {"user": "human", "assistant": "gpt"}
        row = {
            "conversations": [{"from": names[r], "value": c} for r, c in SHAREGPT_TURNS],
            "system": "Be kind.",
        }
    else:  # OpenAI messages, the system text as a leading turn
        row = {"messages": [{"role": "system", "content": "Be kind."}]
               + [{"role": r, "content": c} for r, c in SHAREGPT_TURNS]}
    src = write_jsonl([row, row], str(tmp_path / "chat"))
    prefix = tmp_path / "chat_out"
    assert run("--input", src, "--tokenizer-name-or-path", qwen_chat_tokenizer, "--output-prefix", prefix,
               "--handler-name", "SharegptStyleInstructionHandler", "--prompt-type", prompt_type) == 0
    tok = qwen_chat_reference
    messages = [{"role": "system", "content": "Be kind."}] + [
        {"role": r, "content": c} for r, c in SHAREGPT_TURNS
    ]
    ids, labels = expected_sample(tok, messages)
    got = read_sft(prefix)
    assert got["input_ids"] == [ids, ids] and got["labels"] == [labels, labels]
    learned = tok.decode([t for t in labels if t != -100])
    assert learned == "".join(c + "<|im_end|>\n" for r, c in SHAREGPT_TURNS if r == "assistant")


def test_history_column_and_map_keys(tmp_path, qwen_chat_tokenizer, qwen_chat_reference):
    rows = [{"q": "And 3+3?", "ctx": "", "a": "6", "hist": [["What is 1+1?", "2"], ["And 2+2?", "4"]]}]
    src = write_parquet(rows, str(tmp_path / "hist"))
    prefix = tmp_path / "hist_out"
    assert run("--input", src, "--tokenizer-name-or-path", qwen_chat_tokenizer, "--output-prefix", prefix,
               "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen",
               "--map-keys", '{"prompt": "q", "query": "ctx", "response": "a", "history": "hist"}') == 0
    tok = qwen_chat_reference
    messages = [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    ids, labels = expected_sample(tok, messages)
    got = read_sft(prefix)
    assert got["input_ids"] == [ids] and got["labels"] == [labels]


def _words(rng, n) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "tokens", "pack"]) for _ in range(n))


def _varied_rows(n: int = 40) -> list[dict]:
    rng = random.Random(7)
    return [{"instruction": f"Question {i}: {_words(rng, rng.randint(1, 12))}", "input": "",
             "output": f"Answer {i}: {_words(rng, rng.randint(0, 90))}"} for i in range(n)]


def _summary(err: str, pattern: str) -> tuple[int, ...]:
    m = re.search(pattern, err)
    assert m, err
    return tuple(int(g) for g in m.groups())


def _split_whole_samples(ids, labels, samples) -> list[tuple]:
    """Split a pack's real tokens into whole samples from ``samples`` (a multiset, consumed)."""
    found, at = [], 0
    while at < len(ids):
        for s in list(samples):
            n = len(s[0])
            if tuple(ids[at:at + n]) == s[0] and tuple(labels[at:at + n]) == s[1]:
                samples.remove(s)
                found.append(s)
                at += n
                break
        else:
            raise AssertionError(f"tokens at {at} are not the start of a whole sample")
    return found


@pytest.fixture(scope="module")
def varied_unpacked(tmp_path_factory, qwen_chat_tokenizer) -> tuple[list, dict]:
    """The packing tests' tool arguments (40 rows of varied lengths) and every sample, unpacked."""
    folder = tmp_path_factory.mktemp("varied")
    src = write_jsonl(_varied_rows(), str(folder / "rows"))
    common = ["--input", src, "--tokenizer-name-or-path", qwen_chat_tokenizer, "--handler-name",
              "AlpacaStyleInstructionHandler", "--prompt-type", "qwen"]
    assert run(*common, "--output-prefix", folder / "plain") == 0
    return common, read_sft(folder / "plain")


@pytest.mark.parametrize("neat", [False, True])
def test_pack_holds_whole_samples(tmp_path, varied_unpacked, capsys, neat):
    seq = 128
    common, unpacked = varied_unpacked
    capsys.readouterr()
    argv = [*common, "--output-prefix", tmp_path / "packed", "--pack", "--seq-length", seq] + (
        ["--neat-pack"] if neat else []
    )
    assert run(*argv) == 0
    err = capsys.readouterr().err
    long = [k for k, s in enumerate(unpacked["input_ids"]) if len(s) >= seq]
    assert 0 < len(long) < len(unpacked["input_ids"])  # the rows exercise the --seq-length rule
    samples = []
    for k, (ids, labels) in enumerate(zip(unpacked["input_ids"], unpacked["labels"])):
        if k in long:
            if not neat:
                continue  # dropped
            ids, labels = ids[: seq - 1], labels[: seq - 1]  # cut to seq-length - 1
        samples.append((tuple(ids), tuple(labels)))
    if neat:
        assert _summary(err, r"(\d+) cut to their first 127 tokens") == (len(long),)
    else:
        assert _summary(err, r"or more: (\d+) dropped") == (len(long),)
    got = read_sft(tmp_path / "packed")
    n_samples, n_packs = _summary(err, r"--pack: (\d+) samples in (\d+) sequences")
    assert n_samples == len(samples) and n_packs == len(got["input_ids"])
    remaining = list(samples)
    rooms, sizes = [], []
    for ids, mask, labels in zip(got["input_ids"], got["attention_mask"], got["labels"]):
        assert len(ids) == len(mask) == len(labels) == seq
        real = seq
        while real and ids[real - 1] == PAD and labels[real - 1] == -100:
            real -= 1
        assert real <= seq - 1  # MindSpeed keeps one position free
        assert all(t == PAD for t in ids[real:]) and all(t == -100 for t in labels[real:])
        parts = _split_whole_samples(ids[:real], labels[:real], remaining)
        rooms.append(seq - 1 - real)
        sizes.append(min(len(p[0]) for p in parts))
        if neat:  # the mask numbers the samples 1, 2, ... and is 0 on padding
            numbers = [n + 1 for n, p in enumerate(parts) for _ in p[0]]
            assert mask == numbers + [0] * (seq - real)
        else:
            assert mask == [1] * seq
    assert remaining == []  # every sample is in exactly one pack
    # greedy: a pack is closed only when no sample of a later pack fits its free room
    for k in range(n_packs - 1):
        assert min(sizes[k + 1:]) > rooms[k]
    assert n_packs < len(samples)


def test_greedy_packs_take_the_longest_sample_that_fits():
    from mindspeed_llm.data.instruction import greedy_packs

    lengths = [5, 9, 3, 7, 1, 4]
    # capacity 10: 9+1 | 7+3 | 5+4
    assert greedy_packs(lengths, 10) == [[1, 4], [3, 2], [0, 5]]


SPECIALS = {"bos": "<s>", "eos": "</s>"}
TURNS = [("user", " hi "), ("assistant", "yo"), ("user", "more"), ("assistant", "done")]


@pytest.mark.parametrize("name,text,answers", [
    ("llama3", "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
     "yo<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nmore<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\ndone<|eot_id|>", ["yo<|eot_id|>", "done<|eot_id|>"]),
    ("llama2", "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] yo </s><s>[INST] more [/INST] done </s>",
     [" yo </s>", " done </s>"]),
    ("mistral", "<s>[INST] S\n\n hi  [/INST]yo</s>[INST] more [/INST]done</s>", ["yo</s>", "done</s>"]),
    ("empty", "S hi yomoredone", ["yo", "done"]),
    ("qwen3", "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n"
     "yo<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n",
     ["yo<|im_end|>\n", "<think>\n\n</think>\n\ndone<|im_end|>\n"]),
])
def test_builtin_templates_render_the_models_format(name, text, answers):
    got, spans = TEMPLATES[name].render("S", TURNS, SPECIALS)
    assert got == text
    assert [got[a:b] for a, b in spans] == answers


# ---------------------------------------------------------------- errors: one line, no output


def _one_error(capsys) -> str:
    text = capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


def _sft(src, tok, out, *extra):
    return run("--input", src, "--tokenizer-name-or-path", tok, "--output-prefix", out, *extra)


ALPACA = ("--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen")


@pytest.mark.parametrize("extra,needle", [
    (("--handler-name", "AlpacaStyleInstructionHandler"), "needs --prompt-type"),
    (("--prompt-type", "qwen"), "--prompt-type: only instruction handlers use it"),
    ((*ALPACA, "--pack"), "--pack needs --seq-length"),
    ((*ALPACA, "--neat-pack", "--seq-length", "9"), "--neat-pack needs --pack"),
    ((*ALPACA, "--map-keys", "{prompt: x}"), "--map-keys {prompt: x}: not JSON"),
    ((*ALPACA, "--map-keys", '{"answer": "output"}'), "'answer' is not a column name"),
    ((*ALPACA, "--map-keys", '{"response": "nope"}'), "'response' -> 'nope': no such column"),
    ((*ALPACA, "--n-subs", "2"), "--n-subs 2: not available"),
])
def test_bad_flags_are_one_line(tmp_path, bpe_tokenizer, capsys, extra, needle):
    src = write_jsonl(ALPACA_ROWS, str(tmp_path / "in"))
    assert _sft(src, bpe_tokenizer, tmp_path / "o" / "x", *extra) == 2
    assert needle in _one_error(capsys)
    assert not (tmp_path / "o").exists() or listing(tmp_path / "o") == []


def test_chat_template_missing_is_refused(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ALPACA_ROWS, str(tmp_path / "in"))
    argv = ("--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "chat_template")
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv) == 2
    assert "has no chat_template" in _one_error(capsys)
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []


def test_no_learnable_tokens_is_refused(tmp_path, bpe_tokenizer, capsys):
    rows = [{"instruction": "a question", "input": "", "output": ""}] * 3
    src = write_jsonl(rows, str(tmp_path / "in"))
    argv = ("--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "empty")
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv) == 2
    assert "none of the 3 samples has a token to learn" in _one_error(capsys)
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []


def test_all_samples_too_long_is_refused(tmp_path, bpe_tokenizer, capsys):
    src = write_jsonl(ALPACA_ROWS, str(tmp_path / "in"))
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *ALPACA, "--seq-length", "4", "--pack") == 2
    assert "--seq-length 4: all 3 samples have 4 tokens or more and were dropped" in _one_error(capsys)
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []


def test_bad_conversation_names_the_row_or_is_skipped(tmp_path, bpe_tokenizer, capsys):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]}
    src = write_jsonl([good, bad, good], str(tmp_path / "in"))
    argv = ("--handler-name", "SharegptStyleInstructionHandler", "--prompt-type", "qwen")
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv) == 2
    line = _one_error(capsys)
    assert "in.jsonl: row 2: turn 2 is 'user'" in line and "--skip-bad-rows" in line
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv, "--skip-bad-rows") == 0
    assert "skipped 1 bad rows" in capsys.readouterr().err
    assert len(read_sft(tmp_path / "o")["input_ids"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True])
def test_full_disk_leaves_nothing_and_keeps_the_earlier_output(tmp_path, bpe_tokenizer, pack):
    """A 64 KiB file-size limit in the child: the first write past it fails with EFBIG as on a full disk."""
    from tests.helpers.launch import StartedScript, with_file_size_limit
    from tests.helpers.paths import REPO_ROOT
    from tests.tool_process import error_line, leftovers, tree_digest

    rows = [
        {"instruction": f"question {i} " + "word " * 20, "input": "", "output": "answer " * 30}
        for i in range(600)
    ]
    src = write_jsonl(rows, str(tmp_path / "big"))
    out = tmp_path / "out"
    argv = ["--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o", *ALPACA,
            "--workers", 2] + (["--pack", "--seq-length", 512] if pack else [])
    assert _sft(write_jsonl(ALPACA_ROWS, str(tmp_path / "small")), bpe_tokenizer, out / "o", *ALPACA) == 0
    before = tree_digest(out)
    limited = with_file_size_limit(REPO_ROOT / "preprocess_data.py", 64 * 1024)
    proc = StartedScript(*limited, *argv).result()
    line = error_line(proc.stderr)
    assert proc.returncode == 1 and "failed (File too large" in line and "temporary files removed" in line, (
        line
    )
    assert tree_digest(out) == before
    assert leftovers(tmp_path) == []


def test_example_script_runs_on_the_alpaca_parquet(tmp_path, qwen_chat_tokenizer, qwen_chat_reference):
    """examples/mcore/qwen25/data_convert_qwen25_instruction.sh as a user runs it (quick start's parquet):
    bash runs the script, whose ``python`` line is recorded and run from the user's folder as ``python -u
    ./preprocess_data.py ...`` forked from a preloaded interpreter (tests/helpers/launch.py: a fresh one
    cost about 4 CPU s of imports; the entry script in a fresh interpreter:
    tests/test_package_structure.py)."""
    import shutil
    import subprocess

    from mindspeed_llm.quickstart.assets import write_alpaca_parquet
    from tests.conftest import REPO_ROOT
    from tests.helpers.launch import StartedScript

    script = "examples/mcore/qwen25/data_convert_qwen25_instruction.sh"
    write_alpaca_parquet(tmp_path / "dataset" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet", max_rows=20)
    shutil.copytree(qwen_chat_tokenizer, tmp_path / "model_from_hf" / "qwen2.5-7b-hf")
    (tmp_path / "preprocess_data.py").symlink_to(REPO_ROOT / "preprocess_data.py")
    recorder = tmp_path / "bin" / "python"
    recorder.parent.mkdir()
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    recorder.chmod(0o755)
    env = {**os.environ, "PATH": f"{recorder.parent}{os.pathsep}{os.environ['PATH']}",
           "ARGS_OUT": str(tmp_path / "python.args")}
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    argv = (tmp_path / "python.args").read_text().splitlines()
    assert argv[0] == "./preprocess_data.py", argv
    proc = StartedScript(*argv, cwd=tmp_path, timeout=600).result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_sft(tmp_path / "finetune_dataset" / "alpaca")
    assert len(got["input_ids"]) == 20
    tok = qwen_chat_reference
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "dataset" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet").to_pylist()[0]
    ids, labels = expected_sample(tok, _alpaca_messages({**row, "system": None}))
    assert got["input_ids"][0] == ids and got["labels"][0] == labels


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,code,word", [(2, 130, "interrupted (Ctrl-C)"), (15, 143, "terminated (SIGTERM)")]
)
def test_signal_while_writing_packed_data(tmp_path, bpe_tokenizer, sig, code, word):
    """A real signal once --pack's scratch file holds samples: one line, earlier output kept, nothing left."""
    from tests.helpers.launch import StartedScript
    from tests.helpers.paths import REPO_ROOT
    from tests.tool_process import error_line, leftovers, signal_when, tree_digest

    rows = [{"instruction": f"question {i} " + "word " * 20, "input": "", "output": "answer " * 30}
            for i in range(20000)]
    src = write_jsonl(rows, str(tmp_path / "big"))
    out = tmp_path / "out"
    assert _sft(write_jsonl(ALPACA_ROWS, str(tmp_path / "small")), bpe_tokenizer, out / "o", *ALPACA) == 0
    before = tree_digest(out)

    def writing() -> bool:
        return any(".bin.tmp" in n and os.path.getsize(out / n) > 0 for n in os.listdir(out))

    argv = ["--input", src, "--tokenizer-name-or-path", bpe_tokenizer, "--output-prefix", out / "o", *ALPACA,
            "--workers", 2, "--pack", "--seq-length", 512]
    rc, err = signal_when(lambda: StartedScript(REPO_ROOT / "preprocess_data.py", *argv), writing, sig)
    assert rc == code, err
    line = error_line(err)
    assert word in line and "temporary files removed" in line
    assert tree_digest(out) == before and leftovers(tmp_path) == []


def test_tokenizers_without_offsets_split_prompt_and_answer_alike(qwen_chat_tokenizer):
    """The per-piece path (slow tokenizers) gives the same ids and labels as the offsets path on ChatML."""
    from mindspeed_llm.data.instruction import InstructionEncoder
    from mindspeed_llm.data.tokenizer import DocumentTokenizer

    encoder = InstructionEncoder(DocumentTokenizer(qwen_chat_tokenizer), "qwen", append_eod=False)
    turns = list(SHAREGPT_TURNS)
    fast = encoder.sample("Be kind.", turns)
    encoder.fast = False
    assert encoder.sample("Be kind.", turns) == fast
