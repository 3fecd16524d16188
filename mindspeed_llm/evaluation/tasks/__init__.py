"""The built-in benchmarks of ``evaluation.py --task``, read from their public release files."""

from __future__ import annotations

from mindspeed_llm.evaluation.tasks.base import Question, Task, TaskDataError
from mindspeed_llm.evaluation.tasks.generation import BBH, GSM8K, HUMANEVAL
from mindspeed_llm.evaluation.tasks.multiple_choice import AGIEVAL, BOOLQ, CEVAL, CMMLU, MMLU

TASKS: dict[str, Task] = {t.name: t for t in (MMLU, CMMLU, CEVAL, BOOLQ, GSM8K, BBH, AGIEVAL, HUMANEVAL)}

__all__ = ["TASKS", "Question", "Task", "TaskDataError"]
