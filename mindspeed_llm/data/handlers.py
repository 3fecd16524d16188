"""Handlers: turn the columns of a row into the text of one document per output key.

* ``GeneralPretrainHandler`` (default): each ``--json-keys`` column is a document text; one
  dataset per key.
* ``AlpacaStylePretrainHandler``: the ``text`` column when the data has one, else
  ``instruction``, ``input`` and ``output`` joined by a blank line (empty parts left out).
* ``SharegptStylePretrainHandler``: ``conversations`` (``from``/``value`` turns) or ``messages``
  (``role``/``content`` turns), each turn written ``"<role>: <text>"``, turns joined by a blank
  line, after the ``system`` column when there is one.

A missing value (null) is an empty document. docs/data.md shows the templates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mindspeed_llm.data.errors import PreprocessError

DEFAULT_KEYS = ("text",)
TURN_SEPARATOR = "\n\n"
ALPACA_SEPARATOR = "\n\n"


def _as_text(value: object, column: str, row: int, source: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise PreprocessError(
        f"--input {source}: row {row}: column {column!r} holds {type(value).__name__}, expected text; "
        "pick a text column with --json-keys"
    )


class GeneralPretrainHandler:
    """One document per ``--json-keys`` column."""

    def __init__(self, json_keys: Sequence[str]) -> None:
        self.keys = list(json_keys)

    @property
    def output_keys(self) -> list[str]:
        return self.keys

    def input_columns(self, found: Sequence[str], source: str) -> list[str]:
        """The columns to read; raises when a key is not among the columns found."""
        missing = [k for k in self.keys if k not in found]
        if missing:
            raise PreprocessError(
                f"--input {source}: no column {missing[0]!r} (columns found: {', '.join(found) or 'none'}); "
                "set --json-keys to the text column(s)"
            )
        return self.keys

    def texts(self, columns: dict[str, list], first_row: int, source: str) -> dict[str, list[str]]:
        """Output key -> the documents' texts."""
        out = {}
        for key in self.keys:
            values = columns[key]
            if all(type(v) is str for v in values):
                out[key] = values
            else:
                out[key] = [_as_text(v, key, first_row + i, source) for i, v in enumerate(values)]
        return out


class AlpacaStylePretrainHandler:
    """``text`` if present, else ``instruction``, ``input``, ``output`` joined by blank lines."""

    PARTS = ("instruction", "input", "output")

    def __init__(self, json_keys: Sequence[str]) -> None:
        _only_text_key(json_keys, type(self).__name__)
        self._columns: list[str] = []

    @property
    def output_keys(self) -> list[str]:
        return ["text"]

    def input_columns(self, found: Sequence[str], source: str) -> list[str]:
        """``text``, or the alpaca columns present (``instruction`` and ``output`` are required)."""
        if "text" in found:
            self._columns = ["text"]
        else:
            missing = [c for c in ("instruction", "output") if c not in found]
            if missing:
                raise PreprocessError(
                    f"--input {source}: AlpacaStylePretrainHandler needs a 'text' column or "
                    f"'instruction'/'input'/'output' (columns found: {', '.join(found) or 'none'}); "
                    "use --handler-name GeneralPretrainHandler --json-keys <column> for other data"
                )
            self._columns = [c for c in self.PARTS if c in found]
        return self._columns

    def texts(self, columns: dict[str, list], first_row: int, source: str) -> dict[str, list[str]]:
        """Output key -> the documents' texts."""
        if self._columns == ["text"]:
            return GeneralPretrainHandler(["text"]).texts(columns, first_row, source)
        rows = zip(*(columns[c] for c in self._columns))
        docs = []
        for i, row in enumerate(rows):
            parts = [_as_text(v, c, first_row + i, source) for c, v in zip(self._columns, row)]
            docs.append(ALPACA_SEPARATOR.join(p for p in parts if p))
        return {"text": docs}


class SharegptStylePretrainHandler:
    """Conversations rendered as ``"<role>: <text>"`` turns joined by blank lines."""

    def __init__(self, json_keys: Sequence[str]) -> None:
        _only_text_key(json_keys, type(self).__name__)
        self._turns = "conversations"
        self._system = False

    @property
    def output_keys(self) -> list[str]:
        return ["text"]

    def input_columns(self, found: Sequence[str], source: str) -> list[str]:
        """``conversations`` or ``messages``, plus ``system`` when present."""
        for name in ("conversations", "messages"):
            if name in found:
                self._turns = name
                break
        else:
            raise PreprocessError(
                f"--input {source}: SharegptStylePretrainHandler needs a 'conversations' or 'messages' "
                f"column (columns found: {', '.join(found) or 'none'})"
            )
        self._system = "system" in found
        return [self._turns] + (["system"] if self._system else [])

    def _render(self, turns: object, system: object, row: int, source: str) -> str:
        if isinstance(turns, str):  # e.g. a csv cell holding the JSON list
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError as exc:
                raise PreprocessError(
                    f"--input {source}: row {row}: {self._turns!r} is text but not a JSON list ({exc.msg})"
                ) from exc
        parts = [_as_text(system, "system", row, source)] if system else []
        for turn in turns or []:
            if not isinstance(turn, dict):
                raise PreprocessError(
                    f"--input {source}: row {row}: each turn of {self._turns!r} must be an object "
                    "with from/value or role/content"
                )
            role = turn.get("from", turn.get("role"))
            text = turn.get("value", turn.get("content"))
            parts.append(f"{role}: {_as_text(text, self._turns, row, source)}")
        return TURN_SEPARATOR.join(parts)

    def texts(self, columns: dict[str, list], first_row: int, source: str) -> dict[str, list[str]]:
        """Output key -> the documents' texts."""
        turns = columns[self._turns]
        systems = columns["system"] if self._system else [None] * len(turns)
        return {
            "text": [
                self._render(t, s, first_row + i, source) for i, (t, s) in enumerate(zip(turns, systems))
            ]
        }


def _only_text_key(json_keys: Sequence[str], name: str) -> None:
    if list(json_keys) != list(DEFAULT_KEYS):
        raise PreprocessError(
            f"--json-keys {' '.join(json_keys)}: {name} writes the single key 'text'; "
            "drop --json-keys or use --handler-name GeneralPretrainHandler"
        )


HANDLERS = {
    "GeneralPretrainHandler": GeneralPretrainHandler,
    "AlpacaStylePretrainHandler": AlpacaStylePretrainHandler,
    "SharegptStylePretrainHandler": SharegptStylePretrainHandler,
}


# Instruction (fine-tuning) handlers, in mindspeed_llm.data.instruction_handlers: they write
# <prefix>_packed_{input_ids,attention_mask,labels}_document instead of one dataset per key.
# Pairwise (preference) handlers, in mindspeed_llm.data.pairwise: <prefix>_packed_{chosen,rejected}_*.
PAIRWISE_HANDLER_NAMES = ("AlpacaStylePairwiseHandler", "SharegptStylePairwiseHandler")
INSTRUCTION_HANDLER_NAMES = ("AlpacaStyleInstructionHandler", "SharegptStyleInstructionHandler",
                             *PAIRWISE_HANDLER_NAMES)


def is_instruction_handler(name: str) -> bool:
    """Whether ``--handler-name`` names an instruction (fine-tuning) handler."""
    return name in INSTRUCTION_HANDLER_NAMES


def build_handler(name: str, json_keys: Sequence[str]):
    """The pretraining handler named by ``--handler-name``."""
    if name not in HANDLERS:
        raise PreprocessError(
            f"--handler-name {name}: unknown or not a pretraining handler; choose one of "
            f"{', '.join([*HANDLERS, *INSTRUCTION_HANDLER_NAMES])}"
        )
    return HANDLERS[name](json_keys)
