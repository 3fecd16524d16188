"""Instruction (fine-tuning) handlers: rows -> conversations ``(system, [(role, content), ...])``.

Column names follow MindSpeed-LLM (LLaMA-Factory's dataset attributes); ``--map-keys`` renames
them with a JSON dict ``{"<MindSpeed name>": "<column in the data>"}``.

* ``AlpacaStyleInstructionHandler``: ``prompt`` (column ``instruction``), ``query`` (``input``),
  ``response`` (``output``), optional ``system`` and ``history`` (a list of ``[prompt, response]``
  pairs, earlier turns). The user text is the instruction and the input joined by one newline
  (an empty part left out).
* ``SharegptStyleInstructionHandler``: ``messages`` (column ``conversations``, or ``messages`` when
  there is no ``conversations``), optional ``system``, and ``tags`` (``role_tag``, ``content_tag``,
  ``user_tag``, ``assistant_tag``, ``system_tag``). A turn is ShareGPT's ``{"from", "value"}``
  (``human``/``gpt``) or OpenAI's ``{"role", "content"}`` (``user``/``assistant``); a leading
  system turn is the system text.

A conversation must alternate user and assistant and end with an answer; one that does not is a
bad row (an error naming it, or skipped and counted with ``--skip-bad-rows``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mindspeed_llm.data.chat_templates import ASSISTANT, USER
from mindspeed_llm.data.errors import PreprocessError

Conversation = tuple[str, list[tuple[str, str]]]


class BadRow(ValueError):
    """A row that cannot be a conversation (reason in the message)."""


def _text(value: object, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise BadRow(f"{what} holds {type(value).__name__}, expected text")


def _json_value(value: object, what: str) -> object:
    """A list kept as text (a csv cell) is parsed as JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRow(f"{what} is text but not JSON ({exc.msg})") from None
    return value


def parse_map_keys(text: str | None) -> dict:
    """``--map-keys`` as a dict (argparse keeps the raw text so that its error is ours)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PreprocessError(
            f"--map-keys {text}: not JSON ({exc.msg}); write a dict such as "
            "'{\"prompt\": \"instruction\", \"query\": \"input\", \"response\": \"output\"}'"
        ) from None
    if not isinstance(value, dict):
        raise PreprocessError(f"--map-keys {text}: must be a JSON dict of MindSpeed names to column names")
    return value


class _InstructionHandler:
    NAMES: dict[str, str | None] = {}  # MindSpeed name -> default column (None: optional, off by default)
    REQUIRED: tuple[str, ...] = ()

    def __init__(self, map_keys: dict) -> None:
        unknown = [k for k in map_keys if k not in self.NAMES]
        if unknown:
            raise PreprocessError(
                f"--map-keys: {unknown[0]!r} is not a column name of {type(self).__name__}; "
                f"use {', '.join(self.NAMES)}"
            )
        self.map_keys = map_keys
        self.columns: dict[str, str] = {}  # MindSpeed name -> column read
        self.optional_columns: list[str] = []  # columns a row may lack (JSON records: per_row)

    def _resolve(self, name: str, found: Sequence[str]) -> str | None:
        if name in self.map_keys:
            return self.map_keys[name]
        default = self.NAMES[name]
        return default if default in found else None

    def input_columns(self, found: Sequence[str], source: str, *, per_row: bool = False) -> list[str]:
        """The columns to read; a required or mapped column that is missing is an error.

        ``per_row`` (JSON records, ``found`` being the first record's keys): an optional column is read from
        every row that has it (:attr:`optional_columns`), whichever row has it first.
        """
        self.columns, self.optional_columns = {}, []
        for name in self.NAMES:
            if per_row and name not in self.REQUIRED:
                column = self.map_keys.get(name, self.NAMES[name])
                if isinstance(column, str):
                    self.columns[name] = column
                    self.optional_columns.append(column)
                    continue
            column = self._resolve(name, found)
            if column is None:
                if name in self.REQUIRED:
                    raise PreprocessError(
                        f"--input {source}: {type(self).__name__} needs a {self.NAMES[name]!r} column "
                        f"(columns found: {', '.join(found) or 'none'}); name it with --map-keys "
                        f"'{{\"{name}\": \"<column>\"}}'"
                    )
                continue
            if not isinstance(column, str) or column not in found:
                raise PreprocessError(
                    f"--map-keys: {name!r} -> {column!r}: no such column in {source} "
                    f"(columns found: {', '.join(found) or 'none'})"
                )
            self.columns[name] = column
        return list(dict.fromkeys(self.columns.values()))

    def conversations(self, columns: dict[str, list], num_rows: int) -> list[Conversation | BadRow]:
        """One conversation (or the reason it is bad) per row."""
        values = {name: columns[col] for name, col in self.columns.items()}
        out: list[Conversation | BadRow] = []
        for i in range(num_rows):
            row = {name: v[i] for name, v in values.items()}
            try:
                out.append(self.conversation(row))
            except BadRow as exc:
                out.append(exc)
        return out

    def conversation(self, row: dict) -> Conversation:
        raise NotImplementedError


class AlpacaStyleInstructionHandler(_InstructionHandler):
    """instruction/input/output (+ system, history) rows -> conversations."""

    NAMES = {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    }
    REQUIRED = ("prompt", "response")

    def conversation(self, row: dict) -> Conversation:
        """The row's earlier turns, then instruction + input as the user turn and output as the answer."""
        turns: list[tuple[str, str]] = []
        history = _json_value(row.get("history"), "history")
        if history is not None and not isinstance(history, (list, tuple)):
            raise BadRow(f"history holds {type(history).__name__}, expected a list of [prompt, response] "
                         "pairs")
        for pair in history or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise BadRow("history must be a list of [prompt, response] pairs")
            turns.append((USER, _text(pair[0], "history")))
            turns.append((ASSISTANT, _text(pair[1], "history")))
        parts = [_text(row.get("prompt"), self.columns["prompt"]), _text(row.get("query"), "query")]
        turns.append((USER, "\n".join(p for p in parts if p)))
        turns.append((ASSISTANT, _text(row.get("response"), self.columns["response"])))
        return _text(row.get("system"), "system"), turns


_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": "system"}


class SharegptStyleInstructionHandler(_InstructionHandler):
    """ShareGPT (from/value) or OpenAI (role/content) conversations -> conversations."""

    NAMES = {"messages": "conversations", "system": "system", "tags": None}
    REQUIRED = ("messages",)

    def __init__(self, map_keys: dict) -> None:
        tags = map_keys.get("tags", {})
        map_keys = {k: v for k, v in map_keys.items() if k != "tags"}
        super().__init__(map_keys)
        if not isinstance(tags, dict):
            raise PreprocessError("--map-keys: 'tags' must be a dict such as {\"role_tag\": \"from\", ...}")
        known = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag")
        unknown = [t for t in tags if t not in known]
        if unknown:
            raise PreprocessError(
                f"--map-keys: tag {unknown[0]!r} is not supported; use {', '.join(known)} "
                "(tool and observation turns are not supported)"
            )
        self.tags = tags
        self.roles = dict(_ROLES)
        for tag, role in (("user_tag", USER), ("assistant_tag", ASSISTANT), ("system_tag", "system")):
            if tag in tags:
                self.roles[tags[tag]] = role

    def _resolve(self, name: str, found: Sequence[str]) -> str | None:
        if (
            name == "messages"
            and name not in self.map_keys
            and "conversations" not in found
            and "messages" in found
        ):
            return "messages"
        return super()._resolve(name, found)

    def _turn(self, turn: object) -> tuple[str, str]:
        if not isinstance(turn, dict):
            raise BadRow("each turn must be an object with from/value or role/content")
        role_tag = self.tags.get("role_tag", "from" if "from" in turn else "role")
        content_tag = self.tags.get("content_tag", "value" if role_tag == "from" else "content")
        if role_tag not in turn or content_tag not in turn:
            raise BadRow(f"a turn lacks {role_tag!r} or {content_tag!r} (keys: {', '.join(turn)})")
        if not isinstance(turn[role_tag], str):
            raise BadRow(f"{role_tag!r} holds {type(turn[role_tag]).__name__} {turn[role_tag]!r}, expected "
                         "a role name (user/human, assistant/gpt, system)")
        role = self.roles.get(turn[role_tag])
        if role is None:
            raise BadRow(f"role {turn[role_tag]!r} is not supported (user/human, assistant/gpt, system)")
        return role, _text(turn[content_tag], "content")

    def conversation(self, row: dict) -> Conversation:
        """A leading system turn (or the system column), then alternating user/assistant turns."""
        raw = _json_value(row.get("messages"), self.columns["messages"])
        if not isinstance(raw, list):
            raise BadRow(f"{self.columns['messages']!r} must be a list of turns")
        turns = [self._turn(t) for t in raw]
        system = _text(row.get("system"), "system")
        if turns and turns[0][0] == "system":
            system = turns.pop(0)[1]
        if not turns or len(turns) % 2:
            raise BadRow(
                f"{len(turns)} turns: a conversation alternates user and assistant and ends with an answer"
            )
        for i, (role, _) in enumerate(turns):
            if role != (USER if i % 2 == 0 else ASSISTANT):
                raise BadRow(f"turn {i + 1} is {role!r}: turns must alternate user and assistant, user first")
        return system, turns


INSTRUCTION_HANDLERS = {
    "AlpacaStyleInstructionHandler": AlpacaStyleInstructionHandler,
    "SharegptStyleInstructionHandler": SharegptStyleInstructionHandler,
}
