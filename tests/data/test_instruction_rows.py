"""Instruction rows as a user's data has them: optional columns that only some JSON records carry, values of
the wrong type, and a chat template that raises. The reference is transformers' ``apply_chat_template`` on
each row's messages (:func:`tests.data.test_instruction.expected_sample`)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.data.helpers import listing, write_jsonl
from tests.data.test_instruction import (  # noqa: F401 - the session fixture
    QWEN25_CHAT_TEMPLATE,
    _one_error,
    _sft,
    expected_sample,
    qwen_chat_reference,
    qwen_chat_tokenizer,
    read_sft,
)

ALPACA = ("--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen")
SHAREGPT = ("--handler-name", "SharegptStyleInstructionHandler", "--prompt-type", "qwen")


def _messages(row: dict) -> list[dict]:
    out = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for q, a in row.get("history") or []:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return [*out, {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["output"]}]


@pytest.mark.parametrize("case", ["system_first_in_row_2", "system_only_in_row_1", "history_first_in_row_2"])
def test_optional_columns_are_read_per_row(tmp_path, qwen_chat_tokenizer, qwen_chat_reference,  # noqa: F811
                                           capsys, case):
    plain = {"instruction": "What is 2+2?", "input": "", "output": "4"}
    extra = {"system_first_in_row_2": {"system": "Answer briefly."},
             "system_only_in_row_1": {"system": "Answer briefly."},
             "history_first_in_row_2": {"history": [["What is 1+1?", "2"]]}}[case]
    rows = [plain, {**plain, **extra}] if case != "system_only_in_row_1" else [{**plain, **extra}, plain]
    src = write_jsonl(rows, str(tmp_path / "in"))
    assert _sft(src, qwen_chat_tokenizer, tmp_path / "o", *ALPACA) == 0, capsys.readouterr().err
    tok = qwen_chat_reference
    expected = [expected_sample(tok, _messages(r)) for r in rows]
    got = read_sft(tmp_path / "o")
    assert got["input_ids"] == [ids for ids, _ in expected]
    assert got["labels"] == [labels for _, labels in expected]
    assert expected[0] != expected[1]  # the optional column changes the sample: dropping it would show


@pytest.mark.parametrize("argv, rows, words", [
    (SHAREGPT, [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
                {"conversations": [{"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
     "row 2: 'from' holds list ['human'], expected a role name"),
    (ALPACA, [{"instruction": "q", "input": "", "output": "a"},
              {"instruction": "q", "input": "", "output": "a", "history": 5}],
     "row 2: history holds int, expected a list of [prompt, response] pairs"),
])
def test_a_value_of_the_wrong_type_names_the_row_or_is_skipped(tmp_path, bpe_tokenizer, capsys, argv, rows,
                                                               words):
    """The rows are checked before any tokenizer sees them: the small BPE tokenizer (a Qwen2.5 load is about
    1.3 CPU s a run)."""
    src = write_jsonl(rows, str(tmp_path / "in"))
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv) == 2
    line = _one_error(capsys)
    assert f"in.jsonl: {words}" in line and "--skip-bad-rows" in line, line
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []
    assert _sft(src, bpe_tokenizer, tmp_path / "o", *argv, "--skip-bad-rows") == 0
    assert "skipped 1 bad rows" in capsys.readouterr().err
    assert len(read_sft(tmp_path / "o")["input_ids"]) == 1


def test_a_chat_template_that_raises_is_one_line_naming_the_template_and_the_row(
        tmp_path, bpe_tokenizer, capsys):
    """On the small BPE tokenizer with the template set (the template fails, whatever the vocabulary)."""
    tok = shutil.copytree(bpe_tokenizer, tmp_path / "tok")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["chat_template"] = (  # as Gemma's and Mistral's templates refuse a system turn
        "{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{%- endif %}" + QWEN25_CHAT_TEMPLATE)
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    rows = [{"instruction": "q", "input": "", "output": "a"},
            {"instruction": "q", "input": "", "output": "a", "system": "Be brief."}]
    src = write_jsonl(rows, str(tmp_path / "in"))
    code = _sft(src, str(tok), tmp_path / "o", "--handler-name", "AlpacaStyleInstructionHandler",
                "--prompt-type", "chat_template")
    line = _one_error(capsys)
    assert code == 2
    assert line == (f"error: --prompt-type chat_template: the chat template of {tok} fails (TemplateError: "
                    f"System role not supported) at --input {src}: row 2; fix the row or choose another "
                    "--prompt-type")
    assert [n for n in listing(tmp_path) if n.startswith("o_")] == []
