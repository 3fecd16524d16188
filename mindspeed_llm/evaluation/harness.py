"""lm-evaluation-harness's evaluator on rank 0 with :class:`MegatronLM` as its model; lm-eval's own results
JSON (and, with --log-samples, its per-task samples) under --output-path."""

from __future__ import annotations

from mindspeed_llm.console import write_line
from mindspeed_llm.evaluation.config import EvaluationConfig
from mindspeed_llm.evaluation.lm import MegatronLM


def task_manager(config: EvaluationConfig):
    """lm-eval's task index (its registry and --lm-eval-include-path); an unknown task is one line.

    When every task named is a task of --lm-eval-include-path, only that folder is indexed: indexing lm-eval's
    registry (some 15,000 YAML files) costs about 15 CPU seconds, and a task found in the folder is read from
    there (the precedence lm-eval documents for its ``include_path``)."""
    from lm_eval.tasks import TaskManager

    from mindspeed_llm.evaluation.tasks.base import TaskDataError

    if config.lm_eval_include_path:
        local = TaskManager(include_path=config.lm_eval_include_path, include_defaults=False)
        if set(config.lm_eval_tasks) <= set(local.all_subtasks):
            return local
    manager = TaskManager(include_path=config.lm_eval_include_path)
    known = {*manager.all_tasks, *manager.all_groups, *manager.all_tags}
    unknown = [t for t in config.lm_eval_tasks if t not in known]
    if unknown:
        where = f" or in {config.lm_eval_include_path}" if config.lm_eval_include_path else ""
        raise TaskDataError(
            f"--lm-eval-tasks {','.join(unknown)}: not a task of lm-eval's registry{where} "
            "(`lm-eval ls tasks` lists the registry)"
        )
    return manager


def run_lm_eval(lm: MegatronLM, config: EvaluationConfig, manager) -> dict:
    """``lm_eval.simple_evaluate`` over --lm-eval-tasks (``manager``: :func:`task_manager`'s); prints
    lm-eval's     table."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import make_table

    tracker = EvaluationTracker(output_path=config.output_path) if config.output_path else None
    limit = None if config.limit is None else (int(config.limit) if config.limit >= 1 else config.limit)
    results = simple_evaluate(
        model=lm,
        tasks=list(config.lm_eval_tasks),
        num_fewshot=config.num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=config.log_samples,
        evaluation_tracker=tracker,
        batch_size=config.batch_size,
    )
    samples = results.pop("samples", None)
    results.setdefault("config", {})["truncated_requests"] = lm.truncated
    write_line(make_table(results))
    if tracker is not None:
        tracker.save_results_aggregated(results=results, samples=samples if config.log_samples else None)
        if config.log_samples:
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        write_line(f"lm-eval results written under {config.output_path}")
    return results
