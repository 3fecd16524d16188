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


def test_a_chat_template_that_cannot_work_is_one_line_before_the_model_loads(tmp_path) -> None:
    """No template in the tokenizer; a template that raises (jinja2's raise_exception): one line each."""
    import argparse

    from transformers import AutoTokenizer

    from mindspeed_llm.config.flags import ArgumentError
    from mindspeed_llm.inference.cli import chat_template_for
    from tests.helpers.tiny import save_word_tokenizer

    save_word_tokenizer(tmp_path, 16)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    args = argparse.Namespace(prompt_type="chat_template", tokenizer_name_or_path=str(tmp_path))
    with pytest.raises(ArgumentError) as err:
        chat_template_for(args, hf)
    assert str(err.value).startswith(
        f"--prompt-type chat_template: the tokenizer in {tmp_path} has no chat_template")
    hf.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(ArgumentError) as err:
        chat_template_for(args, hf)
    assert str(err.value) == (
        f"--prompt-type chat_template: the chat template of {tmp_path} fails (TemplateError: System role not "
        "supported); choose another --prompt-type")
