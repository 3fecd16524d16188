"""Generation benchmarks: greedy decoding to the task's stop strings, then its answer extraction.

GSM8K: "Question: ... Answer:" with worked solutions from ``train.jsonl``; the number after ``####`` (else the
last number) against the reference's. BBH: one JSON file per subtask, shots from ``cot-prompts/<subtask>.txt``
when the folder has it, else the first examples of the file (not scored); the first line of the answer
against the target. HumanEval: the function body completed from its signature and docstring; the program
with the problem's tests runs in a subprocess (``--allow-code-execution``), pass@1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mindspeed_llm.evaluation.tasks.base import (
    Question,
    Task,
    TaskDataError,
    files_in,
    limited,
    read_json,
    read_jsonl,
    subject_of,
)

# ---- GSM8K -------------------------------------------------------------------------------------------------
GSM8K_LAYOUT = (
    "DIR/test.jsonl, and DIR/train.jsonl for shots (the GSM8K release's grade_school_math/data: "
    "question and answer, the answer ending '#### <number>')"
)
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _number(text: str) -> str:
    value = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.0*", value):
        value = value.split(".")[0]
    return value


def gsm8k_reference(answer: str) -> str:
    return _number(answer.split("####")[-1])


def judge_gsm8k(question: Question, text: str) -> tuple[str, bool]:
    if "####" in text:
        found = _NUMBER.findall(text.split("####")[1])
        predicted = _number(found[0]) if found else ""
    else:
        found = _NUMBER.findall(text)
        predicted = _number(found[-1]) if found else ""
    return predicted, predicted == question.gold


def read_gsm8k(folder: Path, shots: int, limit: float | None) -> list[Question]:
    rows = read_jsonl(folder / "test.jsonl", ("question", "answer"), "gsm8k", GSM8K_LAYOUT)
    train = (
        read_jsonl(folder / "train.jsonl", ("question", "answer"), "gsm8k", GSM8K_LAYOUT)[:shots]
        if shots
        else []
    )
    if len(train) < shots:
        raise TaskDataError(
            f"{folder / 'train.jsonl'}: {len(train)} example(s), --num-fewshot {shots} asks for more"
        )
    body = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train)
    return [
        Question(
            "gsm8k", i, body + f"Question: {row['question']}\nAnswer:", (), gsm8k_reference(row["answer"])
        )
        for i, row in enumerate(limited(rows, limit))
    ]


# ---- BBH ---------------------------------------------------------------------------------------------------
BBH_LAYOUT = (
    'DIR/<subtask>.json (the BIG-Bench-Hard release\'s bbh/ folder: {"examples": [{"input", '
    '"target"}, ...]}), optionally DIR/cot-prompts/<subtask>.txt as the shots'
)


def judge_bbh(question: Question, text: str) -> tuple[str, bool]:
    answer = text.strip().split("\n")[0].strip()
    match = re.search(r"answer is (.*?)\.?$", answer)
    if match:
        answer = match.group(1).strip()
    return answer, answer == question.gold.strip()


def read_bbh(folder: Path, shots: int, limit: float | None) -> list[Question]:
    questions = []
    for path in files_in(folder, ".json", "bbh", BBH_LAYOUT):
        subject = subject_of(path, (".json",))
        data = read_json(path, "bbh", BBH_LAYOUT)
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not all(
            isinstance(e, dict) and {"input", "target"} <= e.keys() for e in examples
        ):
            raise TaskDataError(f"{path}: not a BBH task file; bbh expects {BBH_LAYOUT}")
        cot = folder / "cot-prompts" / f"{subject}.txt"
        if cot.is_file():
            text = cot.read_text(encoding="utf-8")
            body = text.split("-----", 1)[-1].lstrip("\n") + ("\n\n" if not text.endswith("\n\n") else "")
        else:
            if shots >= len(examples):
                raise TaskDataError(
                    f"{path}: {len(examples)} example(s): --num-fewshot {shots} would leave none to "
                    "score (or add cot-prompts/)"
                )
            body = "".join(f"Q: {e['input']}\nA: {e['target']}\n\n" for e in examples[:shots])
            examples = examples[shots:]
        for i, e in enumerate(limited(examples, limit)):
            questions.append(Question(subject, i, body + f"Q: {e['input']}\nA:", (), str(e["target"])))
    return questions


# ---- HumanEval ---------------------------------------------------------------------------------------------
HUMANEVAL_LAYOUT = (
    "DIR/HumanEval.jsonl (or another *.jsonl: task_id, prompt, test, entry_point per line, as "
    "openai/human-eval's data file)"
)
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")


def read_humaneval(folder: Path, shots: int, limit: float | None) -> list[Question]:
    if shots:
        raise TaskDataError(
            "humaneval is zero-shot (the prompt is the function's signature and docstring): "
            "drop --num-fewshot or give 0"
        )
    questions = []
    for path in files_in(folder, ".jsonl", "humaneval", HUMANEVAL_LAYOUT):
        rows = read_jsonl(path, ("task_id", "prompt", "test", "entry_point"), "humaneval", HUMANEVAL_LAYOUT)
        for row in limited(rows, limit):
            questions.append(
                Question(
                    "humaneval",
                    len(questions),
                    row["prompt"],
                    (),
                    str(row["task_id"]),
                    {"test": row["test"], "entry_point": row["entry_point"]},
                )
            )
    return questions


def run_program(source: str, timeout: float) -> tuple[bool, str]:
    """Run ``source`` with this Python in a fresh subprocess (isolated mode, a temporary folder as its working
    directory); True when it exits 0 within ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="humaneval-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        try:
            done = subprocess.run(
                [sys.executable, "-I", path],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False, "timed out"
        return done.returncode == 0, (done.stderr.strip().splitlines() or ["passed"])[-1]


def humaneval_program(question: Question, completion: str) -> str:
    return (
        question.prompt
        + completion
        + "\n\n"
        + question.extra["test"]
        + "\n\n"
        + f"check({question.extra['entry_point']})\n"
    )


def make_humaneval_judge(timeout: float):
    def judge(question: Question, text: str) -> tuple[str, bool]:
        passed, line = run_program(humaneval_program(question, text), timeout)
        return line, passed

    return judge


GSM8K = Task(
    "gsm8k", GSM8K_LAYOUT, 5, read_gsm8k, until=("Question:", "\n\n"), max_new_tokens=256, judge=judge_gsm8k
)
BBH = Task("bbh", BBH_LAYOUT, 3, read_bbh, until=("\n\n", "Q:"), max_new_tokens=128, judge=judge_bbh)
HUMANEVAL = Task(
    "humaneval", HUMANEVAL_LAYOUT, 0, read_humaneval, until=HUMANEVAL_STOP, max_new_tokens=512, judge=None
)
