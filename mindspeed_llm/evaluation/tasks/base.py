"""What a built-in task is: questions read from a benchmark's release files, scored one of two ways.

- multiple choice: each choice is a continuation of the prompt; the prediction is the choice of highest
  log-likelihood (MMLU, CMMLU, CEval, BoolQ, AGIEval's choice questions);
- generation: greedy decoding up to the task's stop strings, then the task's answer extraction (GSM8K,
  BBH, AGIEval's cloze questions, HumanEval).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mindspeed_llm.config.flags import ArgumentError


class TaskDataError(ArgumentError):
    """A task folder or file is missing or not in the benchmark's layout (one line: the path and the
    layout)."""


@dataclass(frozen=True)
class Question:
    """One scored item: the prompt and either its choices (with the right one) or its reference answer."""

    subject: str
    index: int
    prompt: str
    choices: tuple[str, ...] = ()  # continuations scored by log-likelihood; empty for generation
    gold: int | str = 0  # the right choice's index, or the reference answer
    extra: dict = field(default_factory=dict)  # e.g. HumanEval's tests


@dataclass(frozen=True)
class Task:
    """A benchmark: how to read its folder and, for generation, when to stop and how to judge an answer."""

    name: str
    layout: str  # the expected folder layout, for error messages and docs
    default_fewshot: int
    # (folder, shots, limit[, style]) -> questions; ``style`` one of ``prompt_styles`` where the task has them
    read: Callable[..., list[Question]]
    until: tuple[str, ...] = ()  # generation: stop strings (empty: multiple choice)
    max_new_tokens: int = 0
    judge: Callable[[Question, str], tuple[str, bool]] | None = (
        None  # generation: (extracted answer, correct)
    )

    prompt_styles: tuple[str, ...] = ()  # prompt layouts the task offers (the first is the default)

    @property
    def generative(self) -> bool:
        return self.judge is not None


def limited(rows: list, limit: float | None) -> list:
    """The first ``limit`` rows (a count), or that share of them (a fraction below 1)."""
    if limit is None:
        return rows
    count = int(limit) if limit >= 1 else math.ceil(len(rows) * limit)
    return rows[:count]


def require_dir(path: Path, task: str, layout: str) -> Path:
    if not path.is_dir():
        raise TaskDataError(f"{path}: no such folder; {task} expects {layout}")
    return path


def files_in(folder: Path, suffix: str, task: str, layout: str) -> list[Path]:
    """The ``*suffix`` files of ``folder``, sorted; none is an error naming the layout."""
    require_dir(folder, task, layout)
    found = sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
    if not found:
        raise TaskDataError(f"{folder}: no *{suffix} file; {task} expects {layout}")
    return found


def read_csv(path: Path, columns: int, task: str, layout: str, header: bool) -> list[list[str]]:
    """Rows of a CSV file with ``columns`` columns at least (the header skipped when ``header``)."""
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file; {task} expects {layout}")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if header:
        rows = rows[1:]
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) < columns:
            raise TaskDataError(
                f"{path}: line {number} has {len(row)} columns, {task} expects {columns} ({layout})"
            )
    return rows


def read_jsonl(path: Path, keys: Iterable[str], task: str, layout: str) -> list[dict]:
    """Objects of a JSON-lines file, each with ``keys``."""
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file; {task} expects {layout}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(
                    f"{path}: line {number} is not JSON ({exc.msg}); {task} expects {layout}"
                ) from None
            missing = [k for k in keys if not isinstance(row, dict) or k not in row]
            if missing:
                raise TaskDataError(
                    f"{path}: line {number} has no {', '.join(missing)}; {task} expects {layout}"
                )
            rows.append(row)
    return rows


def read_json(path: Path, task: str, layout: str):
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file; {task} expects {layout}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise TaskDataError(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno}); {task} expects {layout}"
        ) from None


def subject_of(path: Path, suffixes: tuple[str, ...]) -> str:
    """The subject a file holds: its name without the split suffix (``anatomy_test.csv`` -> ``anatomy``)."""
    name = path.name
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]
