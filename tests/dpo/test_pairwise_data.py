"""Pairwise handlers: both sides of each pair equal transformers' apply_chat_template, only the compared one
is learned, the four datasets have MindSpeed-LLM's names; bad rows and flags are one line.

The reference is Qwen2.5's real tokenizer with Qwen2.5-Instruct's chat template (tests/data/test_instruction's
fixture); the expected labels come from apply_chat_template's ids alone (the prompt rendered with
add_generation_prompt). Written files are read back with megatron-core's IndexedDataset.
"""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tests.data.helpers import run, write_jsonl
from tests.data.test_instruction import (  # noqa: F401 (the fixtures)
    expected_sample,
    qwen_chat_reference,
    qwen_chat_tokenizer,
)

KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
ORCA_ROWS = [
    {
        "system": "You are an AI assistant.",
        "question": "Describe: Midsummer House, Chinese food, moderate price.",
        "chosen": "Midsummer House is a moderately priced Chinese restaurant.",
        "rejected": ' Sure! Here\'s a sentence:\n\n"Midsummer House serves food."',
    },
    {"system": "", "question": "What is 2+2?", "chosen": "4", "rejected": "5, I think 🙂"},
]
ORCA_KEYS = '{"prompt":"question", "query":"", "system":"system"}'


def read_pairs(prefix) -> dict[str, list[list[int]]]:
    out = {}
    for key in KEYS:
        ds = IndexedDataset(f"{prefix}_packed_{key}_document")
        assert ds.index.dtype == np.int32
        out[key] = [ds[i].tolist() for i in range(len(ds))]
    return out


def test_orca_rows_equal_apply_chat_template(tmp_path, qwen_chat_tokenizer, qwen_chat_reference):  # noqa: F811
    src = write_jsonl(ORCA_ROWS, str(tmp_path / "orca.jsonl"))
    prefix = tmp_path / "out" / "orca"
    assert (
        run(
            "--input",
            src,
            "--tokenizer-name-or-path",
            qwen_chat_tokenizer,
            "--output-prefix",
            prefix,
            "--handler-name",
            "AlpacaStylePairwiseHandler",
            "--prompt-type",
            "qwen",
            "--map-keys",
            ORCA_KEYS,
        )
        == 0
    )
    tok = qwen_chat_reference
    got = read_pairs(prefix)
    for k, row in enumerate(ORCA_ROWS):
        system = [{"role": "system", "content": row["system"]}] if row["system"] else []
        for side in ("chosen", "rejected"):
            messages = [
                *system,
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row[side]},
            ]
            ids, labels = expected_sample(tok, messages)
            assert got[f"{side}_input_ids"][k] == ids
            assert got[f"{side}_labels"][k] == labels
            assert tok.decode([t for t in labels if t != -100]) == row[side] + "<|im_end|>\n"


def test_sharegpt_history_is_prompt_only(tmp_path, qwen_chat_tokenizer, qwen_chat_reference):  # noqa: F811
    """Earlier answers belong to the prompt (-100): only the compared answer is learned."""
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello."},
                {"from": "human", "value": "Name a colour."},
            ],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": "No."},
        }
    ]
    src = write_jsonl(rows, str(tmp_path / "sharegpt.jsonl"))
    prefix = tmp_path / "out" / "sg"
    assert (
        run(
            "--input",
            src,
            "--tokenizer-name-or-path",
            qwen_chat_tokenizer,
            "--output-prefix",
            prefix,
            "--handler-name",
            "SharegptStylePairwiseHandler",
            "--prompt-type",
            "qwen",
        )
        == 0
    )
    tok = qwen_chat_reference
    got = read_pairs(prefix)
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    for side, answer in (("chosen", "Blue."), ("rejected", "No.")):
        ids, _ = expected_sample(tok, [*history, {"role": "assistant", "content": answer}])
        prompt = list(
            tok.apply_chat_template(history, tokenize=True, add_generation_prompt=True)["input_ids"]
        )
        assert got[f"{side}_input_ids"][0] == ids
        assert got[f"{side}_labels"][0] == [-100] * len(prompt) + ids[len(prompt) :]


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_empty_answer_is_one_line_or_skipped(tmp_path, qwen_chat_tokenizer, capsys, side):  # noqa: F811
    rows = [dict(ORCA_ROWS[0]), {**ORCA_ROWS[1], side: "  "}]
    src = write_jsonl(rows, str(tmp_path / "orca.jsonl"))
    argv = (
        "--input",
        src,
        "--tokenizer-name-or-path",
        qwen_chat_tokenizer,
        "--handler-name",
        "AlpacaStylePairwiseHandler",
        "--prompt-type",
        "qwen",
        "--map-keys",
        ORCA_KEYS,
    )
    assert run(*argv, "--output-prefix", tmp_path / "a" / "p") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"row 2: the {side} answer is empty" in err[0] and "--skip-bad-rows" in err[0]
    assert not (tmp_path / "a" / "p_packed_chosen_input_ids_document.bin").exists()
    assert run(*argv, "--output-prefix", tmp_path / "b" / "p", "--skip-bad-rows") == 0
    assert len(read_pairs(tmp_path / "b" / "p")["chosen_input_ids"]) == 1


def test_pack_is_refused(tmp_path, qwen_chat_tokenizer, capsys):  # noqa: F811
    src = write_jsonl(ORCA_ROWS, str(tmp_path / "orca.jsonl"))
    assert (
        run(
            "--input",
            src,
            "--tokenizer-name-or-path",
            qwen_chat_tokenizer,
            "--output-prefix",
            tmp_path / "p",
            "--handler-name",
            "AlpacaStylePairwiseHandler",
            "--prompt-type",
            "qwen",
            "--map-keys",
            ORCA_KEYS,
            "--pack",
            "--seq-length",
            "64",
        )
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--pack" in err[0]
