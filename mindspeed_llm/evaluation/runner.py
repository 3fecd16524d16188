"""The built-in tasks on rank 0: read the questions, score them through :class:`MegatronLM`, print a table
per subject and overall, write ``evaluation_results.json`` (every question's scores) under --output-path."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from mindspeed_llm.console import write_line
from mindspeed_llm.evaluation.config import EvaluationConfig
from mindspeed_llm.evaluation.lm import MegatronLM
from mindspeed_llm.evaluation.tasks import TASKS, Question
from mindspeed_llm.evaluation.tasks.generation import make_humaneval_judge

logger = logging.getLogger("mindspeed_llm.evaluation")

RESULTS_FILE = "evaluation_results.json"


def read_questions(config: EvaluationConfig, wrap=None) -> dict[str, list[Question]]:
    """Each --task's questions from its --task-data-path folder (a bad folder: one line naming the file).

    ``wrap(prompt)``: the prompt put in --prompt-type's chat template (None: as it is).
    """
    found = {}
    for name, folder in zip(config.tasks, config.data_paths):
        task = TASKS[name]
        shots = task.default_fewshot if config.num_fewshot is None else config.num_fewshot
        style = {"style": config.mmlu_prompt} if task.prompt_styles else {}
        questions = task.read(Path(folder), shots, config.limit, **style)
        if wrap is not None:
            questions = [
                Question(q.subject, q.index, wrap(q.prompt), q.choices, q.gold, q.extra) for q in questions
            ]
        found[name] = questions
    return found


def evaluate_task(lm: MegatronLM, name: str, questions: list[Question], config: EvaluationConfig) -> dict:
    """Every question's record (its scores, prediction and verdict) of one task."""
    task = TASKS[name]
    started = time.monotonic()
    records: list[dict | None] = [None] * len(questions)
    choice_rows = [(i, q) for i, q in enumerate(questions) if q.choices]
    if choice_rows:
        pairs = [(q.prompt, c) for _, q in choice_rows for c in q.choices]
        scores = iter(lm.score_pairs(pairs))
        for i, q in choice_rows:
            lls = [next(scores)[0] for _ in q.choices]
            predicted = max(range(len(lls)), key=lls.__getitem__)
            records[i] = {
                "subject": q.subject,
                "index": q.index,
                "loglikelihoods": lls,
                "prediction": predicted,
                "gold": q.gold,
                "correct": predicted == q.gold,
            }
    generated = [(i, q) for i, q in enumerate(questions) if not q.choices]
    if generated:
        judge = task.judge or make_humaneval_judge(config.code_timeout)
        kwargs = {
            "until": list(task.until),
            "do_sample": False,
            "max_gen_toks": config.max_new_tokens or task.max_new_tokens,
        }
        generated.sort(key=lambda item: -len(item[1].prompt))  # longest first, as lm-eval batches
        for first in range(0, len(generated), config.batch_size):
            batch = generated[first : first + config.batch_size]
            texts = lm.generate_texts([q.prompt for _, q in batch], kwargs)
            for (i, q), text in zip(batch, texts):
                answer, correct = judge(q, text)
                records[i] = {
                    "subject": q.subject,
                    "index": q.index,
                    "output": text,
                    "prediction": answer,
                    "gold": q.gold,
                    "correct": bool(correct),
                }
            logger.info(
                "%s: %d/%d answers generated",
                name,
                min(first + config.batch_size, len(generated)),
                len(generated),
            )
    subjects: dict[str, dict] = {}
    for record in records:
        entry = subjects.setdefault(record["subject"], {"questions": 0, "correct": 0})
        entry["questions"] += 1
        entry["correct"] += int(record["correct"])
    for entry in subjects.values():
        entry["accuracy"] = entry["correct"] / entry["questions"]
    total = sum(e["questions"] for e in subjects.values())
    right = sum(e["correct"] for e in subjects.values())
    overall = {
        "questions": total,
        "correct": right,
        "accuracy": right / total if total else 0.0,
        "seconds": round(time.monotonic() - started, 3),
    }
    return {"subjects": subjects, "overall": overall, "questions": records}


def print_table(name: str, result: dict) -> None:
    """Per subject and overall: questions, correct, accuracy."""
    width = max([len(s) for s in result["subjects"]] + [len("overall"), len(name)])
    write_line(f"{name:<{width}}  {'questions':>9}  {'correct':>7}  {'accuracy':>8}")
    for subject, e in sorted(result["subjects"].items()):
        write_line(f"{subject:<{width}}  {e['questions']:>9}  {e['correct']:>7}  {e['accuracy']:>8.4f}")
    o = result["overall"]
    write_line(f"{'overall':<{width}}  {o['questions']:>9}  {o['correct']:>7}  {o['accuracy']:>8.4f}")


def run_builtin(lm: MegatronLM, questions: dict[str, list[Question]], config: EvaluationConfig) -> dict:
    """Each task in --task order: evaluated, its table printed; the JSON written at the end (all or none)."""
    results = {}
    for name, items in questions.items():
        logger.info("%s: %d questions", name, len(items))
        results[name] = evaluate_task(lm, name, items, config)
        print_table(name, results[name])
    if config.output_path:
        os.makedirs(config.output_path, exist_ok=True)
        path = os.path.join(config.output_path, RESULTS_FILE)
        staged = path + ".tmp"
        with open(staged, "w", encoding="utf-8") as f:
            json.dump({"tasks": results, "truncated_requests": lm.truncated}, f, indent=1, ensure_ascii=False)
        os.replace(staged, path)
        write_line(f"results written to {path}")
    return results
