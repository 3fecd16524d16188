"""--task chat's prompt and stop text per template, against the models' chat formats written out by hand."""

from __future__ import annotations

import pytest

from mindspeed_llm.data.chat_templates import ASSISTANT, TEMPLATES, USER
from mindspeed_llm.inference.cli import generation_prompt, template_stop_text

SPECIALS = {"bos": "<s>", "eos": "</s>"}


@pytest.mark.parametrize(
    "name,stop",
    [
        ("qwen", "<|im_end|>"),
        ("qwen3", "<|im_end|>"),
        ("llama3", "<|eot_id|>"),
        ("llama2", "</s>"),
        ("mistral", "</s>"),
        ("empty", ""),
    ],
)
def test_stop_text_is_the_end_of_an_assistant_turn(name: str, stop: str) -> None:
    assert template_stop_text(TEMPLATES[name], SPECIALS) == stop


def test_qwen_prompt_ends_at_the_assistant_header_with_the_history() -> None:
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    turns = [(USER, "Hi"), (ASSISTANT, "Hello!"), (USER, "Name a colour.")]
    assert generation_prompt(TEMPLATES["qwen"], SPECIALS, turns) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")


def test_llama3_prompt() -> None:
    assert generation_prompt(
        TEMPLATES["llama3"], {"bos": "<|begin_of_text|>", "eos": ""}, [(USER, "Hi")]
    ) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
