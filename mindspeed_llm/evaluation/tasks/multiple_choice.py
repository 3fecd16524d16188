"""Multiple-choice benchmarks, scored by the log-likelihood of each choice after the prompt.

MMLU, CMMLU and CEval: one CSV per subject, worked examples (shots) from the subject's ``dev`` file in file
order, each question put as the benchmark's own papers and repositories do (the prompt ends with "Answer:"
and the choices are the letters). BoolQ: passage and question, choices " no" / " yes". AGIEval: the
questions that have options (its cloze questions are generation, see ``generation.py``).
"""

from __future__ import annotations

from pathlib import Path

from mindspeed_llm.evaluation.tasks.base import (
    Question,
    Task,
    TaskDataError,
    files_in,
    limited,
    read_csv,
    read_jsonl,
    subject_of,
)

LETTERS = "ABCD"


def _shots(rows: list[list[str]], count: int, path: Path, task: str) -> list[list[str]]:
    if count > len(rows):
        raise TaskDataError(
            f"{path}: {len(rows)} worked example(s), --num-fewshot {count} asks for more "
            f"({task} takes its shots from this file)"
        )
    return rows[:count]


def _gold_letter(value: str, path: Path, number: int, task: str) -> int:
    letter = value.strip()
    if letter not in LETTERS:
        raise TaskDataError(f"{path}: row {number}'s answer is {value!r}, {task} expects one of A, B, C, D")
    return LETTERS.index(letter)


# ---- MMLU --------------------------------------------------------------------------------------------------
MMLU_LAYOUT = (
    "DIR/dev/<subject>_dev.csv and DIR/test/<subject>_test.csv (the MMLU release's data/ folder: "
    "no header; question, A, B, C, D, answer letter)"
)


def mmlu_block(question: str, options: list[str], answer: str | None) -> str:
    """One MMLU question: the question, its lettered options, ``Answer:`` (with the letter for a shot)."""
    lines = [question, *(f"{letter}. {text}" for letter, text in zip(LETTERS, options))]
    return "\n".join(lines) + "\nAnswer:" + (f" {answer}\n\n" if answer is not None else "")


# --mmlu-prompt: "paper" (Hendrycks et al.'s layout, lm-eval's too) or "mindspeed" (MindSpeed-LLM's).
MMLU_PROMPTS = ("paper", "mindspeed")


def mmlu_prompt(subject: str, shots: list[list[str]], row: list[str], style: str = "paper") -> str:
    """The MMLU prompt: a header naming the subject, the shots, the question.

    ``paper``: Hendrycks et al.'s layout, a blank line after the header and after each shot.
    ``mindspeed``: MindSpeed-LLM's 5-shot layout: its header (with two spaces before the subject), each shot
    on the next line without a blank line between them, then one blank line before the question.
    """
    title = subject.replace("_", " ")
    question = mmlu_block(row[0], row[1:5], None)
    if style == "mindspeed":
        lines = [f"The following are multiple choice questions (with answers) about  {title}."]
        lines += [mmlu_block(s[0], s[1:5], None) + f" {s[5].strip()}" for s in shots]
        return "\n".join(lines) + "\n\n" + question
    if style != "paper":
        raise ValueError(f"unknown MMLU prompt style {style!r}: {', '.join(MMLU_PROMPTS)}")
    header = f"The following are multiple choice questions (with answers) about {title}.\n\n"
    return header + "".join(mmlu_block(s[0], s[1:5], s[5].strip()) for s in shots) + question


def read_mmlu(folder: Path, shots: int, limit: float | None, style: str = "paper") -> list[Question]:
    questions = []
    for path in files_in(folder / "test", "_test.csv", "mmlu", MMLU_LAYOUT):
        subject = subject_of(path, ("_test.csv",))
        dev_path = folder / "dev" / f"{subject}_dev.csv"
        dev = (
            _shots(read_csv(dev_path, 6, "mmlu", MMLU_LAYOUT, header=False), shots, dev_path, "mmlu")
            if shots
            else []
        )
        rows = read_csv(path, 6, "mmlu", MMLU_LAYOUT, header=False)
        for number, row in enumerate(limited(rows, limit), start=1):
            questions.append(
                Question(
                    subject,
                    number - 1,
                    mmlu_prompt(subject, dev, row, style),
                    tuple(f" {x}" for x in LETTERS),
                    _gold_letter(row[5], path, number, "mmlu"),
                )
            )
    return questions


# ---- CMMLU and CEval (Chinese, the official prompts) -------------------------------------------------------
CMMLU_LAYOUT = (
    "DIR/dev/<subject>.csv and DIR/test/<subject>.csv (the CMMLU release: a header row; "
    "index, Question, A, B, C, D, Answer)"
)
CEVAL_LAYOUT = (
    "DIR/dev/<subject>_dev.csv and DIR/val/<subject>_val.csv (the C-Eval release; the test split "
    "has no public answers: a header row; id, question, A, B, C, D, answer[, explanation])"
)


def zh_block(question: str, options: list[str], answer: str | None, answer_word: str) -> str:
    lines = [question, *(f"{letter}. {text}" for letter, text in zip(LETTERS, options))]
    return "\n".join(lines) + f"\n{answer_word}" + (f"{answer}\n\n" if answer is not None else "")


def _read_zh_exam(folder: Path, shots: int, limit: float | None, *, task: str, layout: str, split: str,
                  suffix: str, dev_name, header: str, question_word: str, answer_word: str) -> list[Question]:
    """CMMLU and C-Eval: per-subject CSVs (a header row; id, question, A-D, answer), shots from dev/."""
    questions = []
    for path in files_in(folder / split, suffix, task, layout):
        subject = subject_of(path, (suffix,))
        dev_path = folder / "dev" / dev_name(path, subject)
        dev = _shots(read_csv(dev_path, 7, task, layout, header=True), shots, dev_path, task) if shots else []
        head = header.format(subject=subject.replace("_", " "))
        body = "".join(zh_block(question_word + s[1], s[2:6], s[6].strip(), answer_word) for s in dev)
        rows = read_csv(path, 7, task, layout, header=True)
        for number, row in enumerate(limited(rows, limit), start=1):
            prompt = head + body + zh_block(question_word + row[1], row[2:6], None, answer_word)
            gold = _gold_letter(row[6], path, number + 1, task)
            questions.append(Question(subject, number - 1, prompt, tuple(LETTERS), gold))
    return questions


def read_cmmlu(folder: Path, shots: int, limit: float | None) -> list[Question]:
    return _read_zh_exam(folder, shots, limit, task="cmmlu", layout=CMMLU_LAYOUT, split="test", suffix=".csv",
                         dev_name=lambda path, subject: path.name,
                         header="以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
                         question_word="题目：", answer_word="答案是：")


def read_ceval(folder: Path, shots: int, limit: float | None) -> list[Question]:
    return _read_zh_exam(folder, shots, limit, task="ceval", layout=CEVAL_LAYOUT, split="val",
                         suffix="_val.csv", dev_name=lambda path, subject: f"{subject}_dev.csv",
                         header="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
                         question_word="", answer_word="答案：")


# ---- BoolQ -------------------------------------------------------------------------------------------------
BOOLQ_LAYOUT = (
    "DIR/dev.jsonl (or val.jsonl), and DIR/train.jsonl for shots: one object per line with "
    "question, passage and answer (true/false; SuperGLUE's label 1/0 too)"
)


def _boolq_rows(path: Path) -> list[dict]:
    rows = read_jsonl(path, ("question", "passage"), "boolq", BOOLQ_LAYOUT)
    for number, row in enumerate(rows, start=1):
        if "answer" not in row and "label" not in row:
            raise TaskDataError(
                f"{path}: line {number} has no answer (or label); boolq expects {BOOLQ_LAYOUT}"
            )
    return rows


def _boolq_block(row: dict, with_answer: bool) -> str:
    text = f"{row['passage']}\nQuestion: {row['question'].rstrip('?')}?\nAnswer:"
    return text + (f" {'yes' if _boolq_gold(row) else 'no'}\n\n" if with_answer else "")


def _boolq_gold(row: dict) -> int:
    value = row["answer"] if "answer" in row else row["label"]
    return int(bool(value))


def read_boolq(folder: Path, shots: int, limit: float | None) -> list[Question]:
    split = next(
        (folder / n for n in ("dev.jsonl", "val.jsonl") if (folder / n).is_file()), folder / "dev.jsonl"
    )
    rows = _boolq_rows(split)
    train = _boolq_rows(folder / "train.jsonl")[:shots] if shots else []
    if len(train) < shots:
        raise TaskDataError(
            f"{folder / 'train.jsonl'}: {len(train)} example(s), --num-fewshot {shots} asks for more"
        )
    body = "".join(_boolq_block(r, True) for r in train)
    return [
        Question("boolq", i, body + _boolq_block(row, False), (" no", " yes"), _boolq_gold(row))
        for i, row in enumerate(limited(rows, limit))
    ]


# ---- AGIEval (choice questions) ----------------------------------------------------------------------------
AGIEVAL_LAYOUT = (
    "DIR/<subset>.jsonl (the AGIEval release's data/v1 files: passage, question, options "
    "['(A)...', ...] and label 'A'; cloze subsets: no options and an answer)"
)


def agieval_prompt(row: dict) -> str:
    """AGIEval's zero-shot form: passage, question, the options, and the answer's lead-in."""
    passage = f"{row['passage']}\n" if row.get("passage") else ""
    if row.get("options"):
        options = " ".join(row["options"])
        return (
            f"{passage}Q: {row['question']} Answer Choices: {options}\nA: Among A through "
            f"{chr(ord('A') + len(row['options']) - 1)}, the answer is"
        )
    return f"{passage}Q: {row['question']}\nA: The answer is"


def read_agieval(folder: Path, shots: int, limit: float | None) -> list[Question]:
    if shots:
        raise TaskDataError(
            "agieval is zero-shot here (its release has no few-shot split in the task files): "
            "drop --num-fewshot or give 0"
        )
    questions = []
    for path in files_in(folder, ".jsonl", "agieval", AGIEVAL_LAYOUT):
        subject = subject_of(path, (".jsonl",))
        rows = read_jsonl(path, ("question",), "agieval", AGIEVAL_LAYOUT)
        for number, row in enumerate(limited(rows, limit), start=1):
            options = row.get("options") or []
            if options:
                label = row.get("label")
                letters = [chr(ord("A") + i) for i in range(len(options))]
                if not isinstance(label, str) or label.strip() not in letters:
                    raise TaskDataError(
                        f"{path}: line {number}'s label is {label!r}, expected one of "
                        f"{', '.join(letters)} (multi-answer questions are not scored here)"
                    )
                questions.append(
                    Question(
                        subject,
                        number - 1,
                        agieval_prompt(row),
                        tuple(f" {x}" for x in letters),
                        letters.index(label.strip()),
                    )
                )
            else:
                if row.get("answer") is None:
                    raise TaskDataError(
                        f"{path}: line {number} has neither options nor an answer; agieval "
                        f"expects {AGIEVAL_LAYOUT}"
                    )
                questions.append(Question(subject, number - 1, agieval_prompt(row), (), str(row["answer"])))
    return questions


def judge_agieval_cloze(question: Question, text: str) -> tuple[str, bool]:
    answer = text.strip().split("\n")[0].strip().rstrip(".")
    return answer, answer == question.gold.strip()


MMLU = Task("mmlu", MMLU_LAYOUT, 5, read_mmlu, prompt_styles=MMLU_PROMPTS)
CMMLU = Task("cmmlu", CMMLU_LAYOUT, 5, read_cmmlu)
CEVAL = Task("ceval", CEVAL_LAYOUT, 5, read_ceval)
BOOLQ = Task("boolq", BOOLQ_LAYOUT, 0, read_boolq)
# AGIEval mixes both kinds: choice questions (choices set) are scored by log-likelihood, cloze ones generated.
AGIEVAL = Task(
    "agieval", AGIEVAL_LAYOUT, 0, read_agieval, until=("\n",), max_new_tokens=32, judge=judge_agieval_cloze
)
