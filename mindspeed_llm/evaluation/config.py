"""evaluation.py's flags and their checks (torch-free), and the frozen settings an evaluation runs with.

The flag names follow MindSpeed-LLM's ``evaluation.py`` (``--task``, ``--task-data-path``,
``--evaluation-batch-size``, ``--max-new-tokens``, ``--prompt-type``) and lm-evaluation-harness's
(``--num-fewshot``, ``--limit``, ``--output-path``, tasks and include path under ``--lm-eval-*``).
The model and checkpoint flags are the training parser's, as for ``inference.py``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.evaluation.tasks.multiple_choice import MMLU_PROMPTS

# The benchmarks evaluation.py reads from their public release files (see docs/evaluation.md for each layout).
KNOWN_TASKS = ("mmlu", "cmmlu", "ceval", "boolq", "gsm8k", "bbh", "agieval", "humaneval")


def add_evaluation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """evaluation.py's flags (an ``extra_args_provider`` for the training parser)."""
    parser.prog = "evaluation.py"
    parser.description = (
        "Evaluate a Megatron checkpoint (any TP/PP/EP) on benchmarks read from local files, "
        "or on lm-evaluation-harness tasks through a Megatron model backend."
    )
    g = parser.add_argument_group("evaluation")
    g.add_argument(
        "--task",
        nargs="+",
        default=None,
        metavar="TASK",
        help=f"built-in benchmarks, several at once: {', '.join(KNOWN_TASKS)}",
    )
    g.add_argument(
        "--task-data-path",
        nargs="+",
        default=None,
        metavar="DIR",
        help="each --task's folder of its public release files, in the order of --task "
        "(one folder for one task)",
    )
    g.add_argument(
        "--evaluation-batch-size",
        type=int,
        default=1,
        help="sequences per forward pass (log-likelihood) or per generated batch",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens generated at most per answer (generation tasks; default: the task's own)",
    )
    g.add_argument(
        "--num-fewshot",
        type=int,
        default=None,
        help="worked examples before each question (default: the task's standard, MMLU 5; "
        "lm-eval: the task's YAML)",
    )
    g.add_argument(
        "--limit",
        type=float,
        default=None,
        help="questions per subject / lm-eval task at most (a fraction below 1: that share)",
    )
    g.add_argument(
        "--output-path",
        default=None,
        metavar="DIR",
        help="write results here: evaluation_results.json (built-in tasks), lm-eval's own "
        "results JSON (--lm-eval-tasks)",
    )
    g.add_argument(
        "--mmlu-prompt",
        choices=MMLU_PROMPTS,
        default="paper",
        help="--task mmlu's prompt layout: the MMLU paper's (as lm-eval's mmlu task; the default) or "
        "MindSpeed-LLM's evaluation.py's (docs/evaluation.md shows both)",
    )
    g.add_argument(
        "--lm-eval-tasks",
        default=None,
        metavar="T1,T2",
        help="run these lm-evaluation-harness tasks (its registry, or --lm-eval-include-path's)",
    )
    g.add_argument(
        "--lm-eval-include-path",
        default=None,
        metavar="DIR",
        help="a folder of lm-eval task YAML files (with their local data files)",
    )
    g.add_argument(
        "--log-samples",
        action="store_true",
        help="lm-eval: write every request and response (lm-eval's samples_<task>.jsonl)",
    )
    g.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="humaneval: run the generated code (in a subprocess with a timeout): only for code "
        "you are willing to run on this machine",
    )
    g.add_argument("--code-timeout", type=float, default=10.0, help="humaneval: seconds each program may run")
    g.add_argument(
        "--use-kv-cache",
        dest="use_kv_cache",
        action="store_true",
        default=True,
        help="generation keeps keys/values of earlier positions (the default; MindSpeed-LLM's spelling)",
    )
    g.add_argument(
        "--no-kv-cache",
        dest="use_kv_cache",
        action="store_false",
        help="recompute the whole sequence for every generated token",
    )
    return parser


@dataclass(frozen=True)
class EvaluationConfig:
    """What one evaluation launch runs (the validated flags of :func:`add_evaluation_args`)."""

    tasks: tuple[str, ...]
    data_paths: tuple[str, ...]
    batch_size: int
    max_new_tokens: int | None
    num_fewshot: int | None
    limit: float | None
    output_path: str | None
    lm_eval_tasks: tuple[str, ...]
    lm_eval_include_path: str | None
    log_samples: bool
    allow_code_execution: bool
    code_timeout: float
    use_kv_cache: bool
    prompt_type: str | None
    mmlu_prompt: str = "paper"

    @classmethod
    def from_args(cls, args) -> EvaluationConfig:
        """The settings of a checked namespace."""
        return cls(
            tasks=tuple(args.task or ()),
            data_paths=tuple(args.task_data_path or ()),
            batch_size=args.evaluation_batch_size,
            max_new_tokens=args.max_new_tokens,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            output_path=args.output_path,
            lm_eval_tasks=tuple(t for t in (args.lm_eval_tasks or "").split(",") if t),
            lm_eval_include_path=args.lm_eval_include_path,
            log_samples=args.log_samples,
            allow_code_execution=args.allow_code_execution,
            code_timeout=args.code_timeout,
            use_kv_cache=args.use_kv_cache,
            prompt_type=args.prompt_type,
            mmlu_prompt=args.mmlu_prompt,
        )


def check_evaluation_flags(args: argparse.Namespace) -> None:
    """The evaluation flags' own rules (reads only; config.validate.check_evaluation_args calls it)."""
    tasks = list(args.task or [])
    unknown = [t for t in tasks if t not in KNOWN_TASKS]
    if unknown:
        raise ArgumentError(
            f"--task {' '.join(unknown)}: unknown task; the built-in tasks are "
            f"{', '.join(KNOWN_TASKS)} (any lm-evaluation-harness task: --lm-eval-tasks)"
        )
    if len(set(tasks)) != len(tasks):
        raise ArgumentError(f"--task {' '.join(tasks)}: a task is named twice")
    if not tasks and not args.lm_eval_tasks:
        raise ArgumentError(
            "nothing to evaluate: give --task TASK [TASK ...] with --task-data-path DIR [DIR ...], "
            "or --lm-eval-tasks T1,T2"
        )
    paths = list(args.task_data_path or [])
    if tasks and len(paths) != len(tasks):
        raise ArgumentError(
            f"--task-data-path: {len(paths)} folder(s) for {len(tasks)} task(s) ({' '.join(tasks)}); "
            "give one "
            "folder per task, in the order of --task"
        )
    if paths and not tasks:
        raise ArgumentError("--task-data-path belongs to --task (lm-eval tasks read their YAML's data files)")
    for task, path in zip(tasks, paths):
        if not os.path.isdir(path):
            raise ArgumentError(
                f"--task-data-path {path}: no such folder ({task}'s release files; "
                "docs/evaluation.md shows each layout)"
            )
    if args.lm_eval_include_path and not os.path.isdir(args.lm_eval_include_path):
        raise ArgumentError(
            f"--lm-eval-include-path {args.lm_eval_include_path}: no such folder "
            "(a folder of lm-eval task YAML files)"
        )
    if args.lm_eval_include_path and not args.lm_eval_tasks:
        raise ArgumentError(
            "--lm-eval-include-path needs --lm-eval-tasks (the task names its YAML files define)"
        )
    if args.log_samples and not args.lm_eval_tasks:
        raise ArgumentError(
            "--log-samples applies to --lm-eval-tasks (built-in tasks always write each "
            "question's scores with --output-path)"
        )
    if args.evaluation_batch_size < 1:
        raise ArgumentError(f"--evaluation-batch-size must be at least 1, got {args.evaluation_batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ArgumentError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ArgumentError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.limit is not None and (args.limit <= 0 or (args.limit > 1 and args.limit != int(args.limit))):
        raise ArgumentError(f"--limit must be a count (>= 1) or a fraction in (0, 1), got {args.limit}")
    if "humaneval" in tasks and not args.allow_code_execution:
        raise ArgumentError(
            "--task humaneval runs the model's code to score it: add --allow-code-execution "
            "(each program runs in a subprocess with --code-timeout seconds), or drop humaneval"
        )
    if args.allow_code_execution and "humaneval" not in tasks:
        raise ArgumentError("--allow-code-execution applies to --task humaneval only")
    if args.mmlu_prompt != "paper" and "mmlu" not in tasks:
        raise ArgumentError(f"--mmlu-prompt {args.mmlu_prompt} applies to --task mmlu: add it, or drop the "
                            "flag")
    if args.code_timeout <= 0:
        raise ArgumentError(f"--code-timeout must be > 0 seconds, got {args.code_timeout}")
    if args.tokenizer_type == "NullTokenizer":
        raise ArgumentError(
            "--tokenizer-type NullTokenizer cannot turn text into tokens: give "
            "--tokenizer-type PretrainedFromHF --tokenizer-name-or-path HF_MODEL_FOLDER"
        )
