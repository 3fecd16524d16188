"""The built-in tasks' readers, prompts and answer extraction, and evaluation.py's refusals (no model, no
torchrun): a bad folder or file names itself and the expected layout, an unknown task lists the known ones,
HumanEval runs code only when asked to, in a subprocess with a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mindspeed_llm.evaluation.config import KNOWN_TASKS
from mindspeed_llm.evaluation.tasks import TASKS, Question, TaskDataError
from mindspeed_llm.evaluation.tasks.generation import judge_bbh, judge_gsm8k, run_program
from tests.evaluation.fixtures import write_gsm8k, write_mmlu
from tests.helpers.paths import REPO_ROOT


def test_the_registry_is_the_flag_list() -> None:
    assert tuple(TASKS) == KNOWN_TASKS


def test_mmlu_prompt_is_the_documented_format(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    (folder / "dev").mkdir(parents=True)
    (folder / "test").mkdir()
    (folder / "dev" / "college_physics_dev.csv").write_text('q1,a,b,c,d,B\n"q, 2",e,f,g,h,D\n')
    (folder / "test" / "college_physics_test.csv").write_text("q3,i,j,k,l,C\n")
    (question,) = TASKS["mmlu"].read(folder, 2, None)
    assert question.prompt == (
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "q1\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n"
        "q, 2\nA. e\nB. f\nC. g\nD. h\nAnswer: D\n\n"
        "q3\nA. i\nB. j\nC. k\nD. l\nAnswer:"
    )
    assert question.choices == (" A", " B", " C", " D") and question.gold == 2
    (zero_shot,) = TASKS["mmlu"].read(folder, 0, None)
    assert zero_shot.prompt.endswith("about college physics.\n\nq3\nA. i\nB. j\nC. k\nD. l\nAnswer:")


def test_mmlu_prompt_in_mindspeed_llms_layout(tmp_path: Path) -> None:
    """--mmlu-prompt mindspeed: MindSpeed-LLM's 5-shot layout, written out by hand (its header with two spaces
    before the subject, the shots on consecutive lines, one blank line before the question), and the same
    choices; the paper's layout stays the default."""
    folder = tmp_path / "mmlu"
    (folder / "dev").mkdir(parents=True)
    (folder / "test").mkdir()
    (folder / "dev" / "college_physics_dev.csv").write_text('q1,a,b,c,d,B\n"q, 2",e,f,g,h,D\n')
    (folder / "test" / "college_physics_test.csv").write_text("q3,i,j,k,l,C\n")
    (question,) = TASKS["mmlu"].read(folder, 2, None, style="mindspeed")
    assert question.prompt == (
        "The following are multiple choice questions (with answers) about  college physics.\n"
        "q1\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n"
        "q, 2\nA. e\nB. f\nC. g\nD. h\nAnswer: D\n\n"
        "q3\nA. i\nB. j\nC. k\nD. l\nAnswer:"
    )
    assert question.choices == (" A", " B", " C", " D") and question.gold == 2
    (zero_shot,) = TASKS["mmlu"].read(folder, 0, None, style="mindspeed")
    assert zero_shot.prompt == (
        "The following are multiple choice questions (with answers) about  college physics.\n\n"
        "q3\nA. i\nB. j\nC. k\nD. l\nAnswer:"
    )
    assert TASKS["mmlu"].prompt_styles[0] == "paper"
    assert TASKS["mmlu"].read(folder, 2, None)[0].prompt.startswith(
        "The following are multiple choice questions (with answers) about college physics.\n\nq1\n")


def test_mmlu_prompt_flag(tmp_path: Path) -> None:
    from mindspeed_llm.config.flags import ArgumentError, build_parser
    from mindspeed_llm.config.validate import check_evaluation_args
    from mindspeed_llm.evaluation.config import EvaluationConfig, add_evaluation_args

    model = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --max-position-embeddings 64 --swiglu "
             "--disable-bias-linear "
             "--tokenizer-type PretrainedFromHF --tokenizer-name-or-path tok --load ckpt").split()
    parser = add_evaluation_args(build_parser())
    args = check_evaluation_args(parser.parse_args(
        [*model, "--task", "mmlu", "--task-data-path", str(tmp_path), "--mmlu-prompt", "mindspeed"]), 1)
    config = EvaluationConfig.from_args(args)
    assert config.mmlu_prompt == "mindspeed"
    write_mmlu(tmp_path, {"anatomy": 1})
    from mindspeed_llm.evaluation.runner import read_questions

    (question,) = read_questions(config)["mmlu"]  # the flag reaches the reader
    assert question.prompt.startswith("The following are multiple choice questions (with answers) about  "
                                      "anatomy.\n")
    with pytest.raises(ArgumentError, match="--mmlu-prompt mindspeed applies to --task mmlu"):
        check_evaluation_args(add_evaluation_args(build_parser()).parse_args(
            [*model, "--lm-eval-tasks", "x", "--mmlu-prompt", "mindspeed"]), 1)


def test_mmlu_limit_and_subjects(tmp_path: Path) -> None:
    folder = write_mmlu(tmp_path / "mmlu", {"anatomy": 4, "virology": 3})
    questions = TASKS["mmlu"].read(folder, 5, 2)
    assert [(q.subject, q.index) for q in questions] == [
        ("anatomy", 0),
        ("anatomy", 1),
        ("virology", 0),
        ("virology", 1),
    ]


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda f: (f / "dev" / "anatomy_dev.csv").unlink(),
            "dev/anatomy_dev.csv: no such file; mmlu expects DIR/dev/",
        ),
        (
            lambda f: (f / "test" / "anatomy_test.csv").write_text("q,a,b,c\n"),
            "anatomy_test.csv: line 1 has 4 columns",
        ),
        (lambda f: (f / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,E\n"), "row 1's answer is 'E'"),
        (lambda f: [p.unlink() for p in (f / "test").iterdir()], "test: no *_test.csv file; mmlu expects"),
    ],
)
def test_a_malformed_mmlu_folder_names_the_file_and_layout(tmp_path: Path, damage, expected) -> None:
    folder = write_mmlu(tmp_path / "mmlu", {"anatomy": 2})
    damage(folder)
    with pytest.raises(TaskDataError) as info:
        TASKS["mmlu"].read(folder, 5, None)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_too_few_shots_is_refused(tmp_path: Path) -> None:
    folder = write_mmlu(tmp_path / "mmlu", {"anatomy": 2})
    with pytest.raises(TaskDataError, match="5 worked example.*--num-fewshot 6"):
        TASKS["mmlu"].read(folder, 6, None)


def test_other_readers_on_their_release_layouts(tmp_path: Path) -> None:
    cmmlu = tmp_path / "cmmlu"
    for split in ("dev", "test"):
        (cmmlu / split).mkdir(parents=True)
        (cmmlu / split / "agronomy.csv").write_text(
            ",Question,A,B,C,D,Answer\n0,问,甲,乙,丙,丁,C\n", encoding="utf-8"
        )
    (q,) = TASKS["cmmlu"].read(cmmlu, 1, None)
    assert q.prompt.endswith("题目：问\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：") and q.gold == 2
    assert "答案是：C\n\n题目：问" in q.prompt and q.choices == ("A", "B", "C", "D")
    ceval = tmp_path / "ceval"
    for split in ("dev", "val"):
        (ceval / split).mkdir(parents=True)
        (ceval / split / f"law_{split}.csv").write_text(
            "id,question,A,B,C,D,answer,explanation\n0,问,甲,乙,丙,丁,A,\n", encoding="utf-8"
        )
    (q,) = TASKS["ceval"].read(ceval, 0, None)
    assert (
        q.prompt
        == "以下是中国关于law考试的单项选择题，请选出其中的正确答案。\n\n"
        "问\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    boolq = tmp_path / "boolq"
    boolq.mkdir()
    (boolq / "dev.jsonl").write_text(json.dumps({"question": "is it", "passage": "P", "answer": True}) + "\n")
    (q,) = TASKS["boolq"].read(boolq, 0, None)
    assert (q.prompt, q.choices, q.gold) == ("P\nQuestion: is it?\nAnswer:", (" no", " yes"), 1)
    gsm = write_gsm8k(tmp_path / "gsm8k")
    questions = TASKS["gsm8k"].read(gsm, 2, None)
    assert len(questions) == 4 and questions[0].prompt.count("Question: ") == 3
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    (bbh / "navigate.json").write_text(
        json.dumps({"examples": [{"input": f"i{k}", "target": f"t{k}"} for k in range(4)]})
    )
    questions = TASKS["bbh"].read(bbh, 3, None)
    assert [(q.prompt, q.gold) for q in questions] == [
        ("Q: i0\nA: t0\n\nQ: i1\nA: t1\n\nQ: i2\nA: t2\n\nQ: i3\nA:", "t3")
    ]
    agi = tmp_path / "agieval"
    agi.mkdir()
    (agi / "lsat-ar.jsonl").write_text(
        json.dumps({"passage": "P", "question": "Q?", "options": ["(A)x", "(B)y"], "label": "B"})
        + "\n"
        + json.dumps({"passage": None, "question": "2+2?", "options": None, "label": None, "answer": "4"})
        + "\n"
    )
    choice, cloze = TASKS["agieval"].read(agi, 0, None)
    assert choice.prompt == "P\nQ: Q? Answer Choices: (A)x (B)y\nA: Among A through B, the answer is"
    assert (choice.choices, choice.gold, cloze.choices, cloze.gold) == ((" A", " B"), 1, (), "4")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(
        TaskDataError, match=r"test.jsonl: line 2 has no answer; gsm8k expects DIR/test.jsonl"
    ):
        TASKS["gsm8k"].read(folder, 0, None)
    (folder / "test.jsonl").write_text("not json\n")
    with pytest.raises(TaskDataError, match="line 1 is not JSON"):
        TASKS["gsm8k"].read(folder, 0, None)


def test_answer_extraction() -> None:
    q = Question("gsm8k", 0, "", (), "1234")
    assert judge_gsm8k(q, " She pays 1,200 + 34 = 1,234 dollars.\n#### 1,234") == ("1234", True)
    assert judge_gsm8k(q, " 12 apples and 1234.") == ("1234", True)
    assert judge_gsm8k(q, " 12 apples") == ("12", False)
    assert judge_gsm8k(Question("gsm8k", 0, "", (), "5"), "#### 5.00") == ("5", True)
    b = Question("bbh", 0, "", (), "(B)")
    assert judge_bbh(b, " Let's think. So the answer is (B).\nQ: next") == ("(B)", True)
    assert judge_bbh(b, " (C)") == ("(C)", False)


def test_humaneval_programs_run_in_a_subprocess_with_a_timeout(tmp_path: Path) -> None:
    assert run_program("def f():\n    return 1\nassert f() == 1\n", 20) == (True, "passed")
    passed, line = run_program("assert 1 == 2, 'wrong'\n", 20)
    assert not passed and line == "AssertionError: wrong"
    assert run_program("while True:\n    pass\n", 1) == (False, "timed out")
    marker = tmp_path / "touched"
    run_program(f"open({str(marker)!r}, 'w').close()\n", 20)  # it runs: the flag is what guards this
    assert marker.exists()


def _refusal(*flags: str) -> str:
    """evaluation.py's one-line refusal (checked before torch is imported)."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "evaluation.py"),
            "--num-layers",
            "2",
            "--hidden-size",
            "64",
            "--num-attention-heads",
            "4",
            "--max-position-embeddings",
            "256",
            "--swiglu",
            "--tokenizer-type",
            "PretrainedFromHF",
            "--tokenizer-name-or-path",
            str(REPO_ROOT),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    return (done.stdout + done.stderr).strip()


def test_bad_launches_are_refused_with_one_line(tmp_path: Path) -> None:
    load = ["--load", str(tmp_path)]
    message = _refusal(*load, "--task", "mmlu", "squad", "--task-data-path", str(tmp_path), str(tmp_path))
    assert "--task squad: unknown task; the built-in tasks are " + ", ".join(KNOWN_TASKS) in message
    assert "no such folder" in _refusal(*load, "--task", "mmlu", "--task-data-path", str(tmp_path / "nope"))
    assert "one folder per task" in _refusal(
        *load, "--task", "mmlu", "boolq", "--task-data-path", str(tmp_path)
    )
    assert "--allow-code-execution" in _refusal(
        *load, "--task", "humaneval", "--task-data-path", str(tmp_path)
    )
    assert "nothing to evaluate" in _refusal(*load)
    assert "--load is required" in _refusal("--task", "mmlu", "--task-data-path", str(tmp_path))


def test_lm_eval_tasks_of_the_include_path_skip_the_registry_and_unknown_ones_are_one_line(tmp_path) -> None:
    """--lm-eval-tasks all in --lm-eval-include-path: only that folder is indexed (lm-eval's registry is not:
    15 CPU s); a name that is not there indexes the registry too, where ``arc_easy`` is found and an unknown
    name is refused by name (no model is needed: the refusal comes before it loads)."""
    from mindspeed_llm.evaluation.config import EvaluationConfig
    from mindspeed_llm.evaluation.harness import task_manager
    from tests.evaluation.fixtures import write_lm_eval_tasks

    folder = write_lm_eval_tasks(tmp_path / "tasks", tmp_path / "cache")

    def config(*names: str) -> EvaluationConfig:
        return EvaluationConfig(tasks=(), data_paths=(), batch_size=1, max_new_tokens=None, num_fewshot=None,
                                limit=None, output_path=None, lm_eval_tasks=names,
                                lm_eval_include_path=str(folder), log_samples=False,
                                allow_code_execution=False, code_timeout=1.0, use_kv_cache=True,
                                prompt_type=None)

    local = task_manager(config("tiny_mc", "tiny_gen"))
    assert local.all_tasks == ["tiny_gen", "tiny_mc", "tiny_ppl"]  # the folder's three, no registry task
    with pytest.raises(TaskDataError) as info:
        task_manager(config("tiny_mc", "arc_easy", "no_such_task"))
    assert str(info.value).startswith(f"--lm-eval-tasks no_such_task: not a task of lm-eval's registry or in "
                                      f"{folder} ")
