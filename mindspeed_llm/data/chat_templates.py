"""Chat templates of ``--prompt-type``: a conversation -> its text plus the character spans that are learned.

A conversation is an optional system text and turns ``(role, content)`` alternating user, assistant,
..., assistant. Every template renders the whole conversation as one string (special tokens
written as their text, as HF chat templates do) and marks, for every assistant turn, the span that
is learned: the answer and the tokens that close it (``<|im_end|>\\n``, ``<|eot_id|>``, EOS). The
system text, every user turn and the assistant header the model is prompted with are not learned.

``--prompt-type chat_template`` uses the ``chat_template`` of the tokenizer folder itself
(``tokenizer.apply_chat_template``): the prompt of assistant turn *i* is the rendering of the turns
before it with ``add_generation_prompt=True``, and the turn ends where the rendering of the turns up
to it ends; a template for which these are not prefixes of the whole conversation is refused.

The built-in templates render what each model's own HF chat template renders for plain
conversations (no tools): ``qwen`` as Qwen2.5-Instruct (ChatML, its default system prompt),
``qwen3`` as Qwen3 (no default system; the last answer gets an empty ``<think>`` block unless it has
one; earlier answers lose theirs), ``llama3`` as Llama-3-Instruct, ``llama2`` as Llama-2-chat,
``mistral`` as Mistral-Instruct (v0.1), and ``empty`` the bare texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mindspeed_llm.data.errors import PreprocessError

USER, ASSISTANT = "user", "assistant"
CHAT_TEMPLATE = "chat_template"  # --prompt-type value: the tokenizer folder's own chat_template

Turns = Sequence[tuple[str, str]]
Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class ChatTemplate:
    """A template as format strings; ``{bos}``/``{eos}`` are the tokenizer's, ``{content}`` the text."""

    name: str
    user: str  # a user turn and the assistant header that prompts the answer (not learned)
    assistant: str  # an answer and what closes it (learned)
    system: str = "{content}"  # the system text, before the first turn (not learned)
    prefix: str = ""  # before everything (not learned)
    default_system: str = ""
    system_in_first_user: str | None = None  # llama2/mistral: the system text goes inside the first user turn
    strip_content: bool = False  # the model's template strips every content
    qwen3_thinking: bool = False

    def render(self, system: str, turns: Turns, specials: dict[str, str]) -> tuple[str, Spans]:
        """The conversation's text and the learned ``(start, end)`` character spans."""
        system = system or self.default_system
        parts = [self.prefix.format(**specials)]
        if system and self.system_in_first_user is None:
            parts.append(self.system.format(content=system, **specials))
        text = "".join(parts)
        spans: Spans = []
        last_answer = max(i for i, (role, _) in enumerate(turns) if role == ASSISTANT)
        for i, (role, content) in enumerate(turns):
            if self.strip_content:
                content = content.strip()
            if role == USER:
                if i == 0 and system and self.system_in_first_user is not None:
                    content = self.system_in_first_user.format(system=system, content=content)
                text += self.user.format(content=content, **specials)
            else:
                if self.qwen3_thinking:
                    content = _qwen3_answer(content, last=i == last_answer)
                start = len(text)
                text += self.assistant.format(content=content, **specials)
                spans.append((start, len(text)))
        return text, spans


def _qwen3_answer(content: str, last: bool) -> str:
    """An answer as Qwen3's template writes it: reasoning kept (or an empty block) only in the last one."""
    reasoning = ""
    if "</think>" in content:
        head, content = content.rsplit("</think>", 1)
        reasoning = head.split("<think>")[-1].strip("\n")
        content = content.lstrip("\n")
    if not last:
        return content
    return f"<think>\n{reasoning}\n</think>\n\n{content}"


_CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
_CHATML_ANSWER = "{content}<|im_end|>\n"

TEMPLATES = {
    t.name: t
    for t in (
        ChatTemplate(
            "qwen",
            user=_CHATML_USER,
            assistant=_CHATML_ANSWER,
            system=_CHATML_SYSTEM,
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
        ChatTemplate(
            "qwen3", user=_CHATML_USER, assistant=_CHATML_ANSWER, system=_CHATML_SYSTEM, qwen3_thinking=True
        ),
        ChatTemplate(
            "llama3",
            prefix="{bos}",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{content}<|eot_id|>",
            strip_content=True,
        ),
        ChatTemplate(
            "llama2",
            user="{bos}[INST] {content} [/INST]",
            assistant=" {content} {eos}",
            system_in_first_user="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
            strip_content=True,
        ),
        ChatTemplate(
            "mistral",
            prefix="{bos}",
            user="[INST] {content} [/INST]",
            assistant="{content}{eos}",
            system_in_first_user="{system}\n\n{content}",
        ),
        ChatTemplate("empty", user="{content}", assistant="{content}"),
    )
}
PROMPT_TYPES = (*TEMPLATES, CHAT_TEMPLATE)


class TokenizerChatTemplate:
    """``--prompt-type chat_template``: the tokenizer's own ``chat_template`` through
    ``apply_chat_template``."""

    name = CHAT_TEMPLATE

    def __init__(self, tokenizer: Any, path: str) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise PreprocessError(
                f"--prompt-type {CHAT_TEMPLATE}: the tokenizer in {path} has no chat_template "
                "(tokenizer_config.json or chat_template.jinja); add one or choose a built-in --prompt-type "
                f"({', '.join(TEMPLATES)})"
            )
        self.tokenizer = tokenizer
        self.path = path

    def _apply(self, messages: list[dict], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def render(self, system: str, turns: Turns, specials: dict[str, str]) -> tuple[str, Spans]:
        """The conversation's text and learned spans, found by rendering its prefixes."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": role, "content": content} for role, content in turns
        ]
        first = 1 if system else 0
        text = self._apply(messages, False)
        spans: Spans = []
        for i in range(first, len(messages)):
            if messages[i]["role"] != ASSISTANT:
                continue
            prompt = self._apply(messages[:i], True)
            upto = text if i == len(messages) - 1 else self._apply(messages[: i + 1], False)
            if not (text.startswith(prompt) and text.startswith(upto) and len(upto) >= len(prompt)):
                raise PreprocessError(
                    f"--prompt-type {CHAT_TEMPLATE}: the chat_template of {self.path} renders an answer "
                    "differently once later turns follow it (as templates that drop earlier reasoning do), "
                    "so prompt and answer cannot be told apart; use a built-in --prompt-type "
                    f"({', '.join(TEMPLATES)})"
                )
            spans.append((len(prompt), len(upto)))
        return text, spans


def build_template(name: str, tokenizer: Any, path: str) -> ChatTemplate | TokenizerChatTemplate:
    """The template named by ``--prompt-type``."""
    if name == CHAT_TEMPLATE:
        return TokenizerChatTemplate(tokenizer, path)
    if name not in TEMPLATES:
        raise PreprocessError(f"--prompt-type {name}: unknown; choose one of {', '.join(PROMPT_TYPES)}")
    return TEMPLATES[name]


def template_specials(tokenizer: Any) -> dict[str, str]:
    """The ``{bos}``/``{eos}`` texts of a tokenizer (empty when it has none)."""
    return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}
