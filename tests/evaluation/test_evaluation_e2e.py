"""evaluation.py under torchrun against independent references on the same weights (fp32, CPU, gloo).

One tiny random Qwen2.5 (transformers makes it), converted to TP1, TP2 and PP2; one launch per layout runs
the lm-eval backend on three local lm-eval tasks (multiple choice with acc / acc_norm and one document past
the model's 256 positions, generate_until, loglikelihood_rolling) and ``--task mmlu`` on a small MMLU-format
folder (5-shot from dev); the TP1 launch also runs ``--task gsm8k``.

- lm-eval: every request's log-likelihood equals lm-eval's own ``hf`` backend on the HF model (relative
  1e-5), with the same greedy flags, so acc and acc_norm are the same per document and overall; every
  generate_until output is the same string; the left-truncated requests are counted.
- MMLU: each question's choice log-likelihoods equal transformers' on the prompt written out here in the
  documented format (docs/evaluation.md), so the predictions and accuracy are the same.
- GSM8K: each output equals transformers' greedy ``generate`` of the same prompt, cut at the task's stops.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.e2e.pretrain_helpers import model_flags
from tests.evaluation.fixtures import (
    OFFLINE_ENV,
    save_eval_tokenizer,
    write_gsm8k,
    write_lm_eval_tasks,
    write_mmlu,
)
from tests.helpers.launch import torchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import load_hf_model, tiny_checkpoints

pytestmark = pytest.mark.slow

EVALUATION = REPO_ROOT / "evaluation.py"
LM_TASKS = ("tiny_mc", "tiny_gen", "tiny_ppl")
BATCH = 4
REL = 1e-5
_LAYOUT = {
    "tp1": ([], 1),
    "tp2": (["--tensor-model-parallel-size", "2"], 2),
    "pp2": (["--pipeline-model-parallel-size", "2"], 2),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluation")
    hf, ckpts = tiny_checkpoints(root, {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}, num_layers=2)
    save_eval_tokenizer(root / "tok")
    return {
        "root": root,
        "hf": hf,
        "tok": root / "tok",
        "ckpts": ckpts,
        "mmlu": write_mmlu(root / "mmlu", {"anatomy": 4, "world_history": 3}),
        "gsm8k": write_gsm8k(root / "gsm8k"),
        "lm_eval": write_lm_eval_tasks(root / "lm_eval", root / "datasets_cache"),
    }


def _results(folder: Path) -> tuple[dict, dict]:
    """lm-eval's results JSON and samples (task -> list by doc_id) written under ``folder``."""
    (results_file,) = folder.rglob("results_*.json")
    samples = {}
    for task in LM_TASKS:
        (path,) = folder.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return json.loads(results_file.read_text()), samples


@pytest.fixture(scope="module")
def launches(tiny) -> dict:
    """layout -> (stdout, lm-eval results, lm-eval samples, evaluation_results.json); one launch each."""
    found = {}
    for layout, (parallel, nproc) in _LAYOUT.items():
        out = tiny["root"] / f"out_{layout}"
        builtin = (
            [
                "--task",
                "mmlu",
                "gsm8k",
                "--task-data-path",
                tiny["mmlu"],
                tiny["gsm8k"],
                "--max-new-tokens",
                "10",
            ]
            if layout == "tp1"
            else ["--task", "mmlu", "--task-data-path", tiny["mmlu"]]
        )
        stdout = torchrun(
            EVALUATION,
            *model_flags(tiny["hf"]),
            *parallel,
            "--load",
            tiny["ckpts"][layout],
            "--tokenizer-name-or-path",
            tiny["tok"],
            *builtin,
            "--lm-eval-tasks",
            ",".join(LM_TASKS),
            "--lm-eval-include-path",
            tiny["lm_eval"],
            "--log-samples",
            "--evaluation-batch-size",
            BATCH,
            "--output-path",
            out,
            nproc=nproc,
            timeout=400,
            env=OFFLINE_ENV,
        ).stdout
        results, samples = _results(out)
        builtin_json = json.loads((out / "evaluation_results.json").read_text())
        found[layout] = (stdout, results, samples, builtin_json)
    return found


@pytest.fixture(scope="module")
def hf_model(tiny):
    return load_hf_model(str(tiny["hf"]))


@pytest.fixture(scope="module")
def lm_eval_hf(tiny) -> tuple[dict, dict]:
    """lm-eval's own ``hf`` backend on the HF model, same tasks, batch size and window."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.update(OFFLINE_ENV)
    lm = HFLM(
        pretrained=str(tiny["hf"]),
        tokenizer=str(tiny["tok"]),
        batch_size=BATCH,
        max_length=256,
        dtype="float32",
        device="cpu",
    )
    results = simple_evaluate(
        model=lm,
        tasks=list(LM_TASKS),
        log_samples=True,
        # only the tasks' folder indexed: lm-eval's registry (15,000 YAML files) would cost 15 CPU s
        task_manager=TaskManager(include_path=str(tiny["lm_eval"]), include_defaults=False),
    )
    samples = results.pop("samples")
    return results, {t: sorted(samples[t], key=lambda r: r["doc_id"]) for t in LM_TASKS}


def _close(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= REL * abs(expected)


@pytest.mark.parametrize("layout", list(_LAYOUT))
def test_lm_eval_requests_equal_hf_backend(launches, lm_eval_hf, layout) -> None:
    _, results, samples, _ = launches[layout]
    ref_results, ref_samples = lm_eval_hf
    for task in ("tiny_mc", "tiny_ppl"):
        assert len(samples[task]) == len(ref_samples[task])
        for ours, ref in zip(samples[task], ref_samples[task]):
            got = [(float(r[0][0]), r[0][1]) if task == "tiny_mc" else float(r[0]) for r in ours["resps"]]
            want = [
                (float(r[0][0]), str(r[0][1])) if task == "tiny_mc" else float(r[0]) for r in ref["resps"]
            ]
            if task == "tiny_mc":
                assert [g for _, g in got] == [w for _, w in want], (task, ours["doc_id"])  # greedy flags
                got, want = [v for v, _ in got], [v for v, _ in want]
            assert all(_close(g, w) for g, w in zip(got, want)), (task, ours["doc_id"], got, want)
    for ours, ref in zip(samples["tiny_mc"], ref_samples["tiny_mc"]):
        assert (ours["acc"], ours["acc_norm"]) == (ref["acc"], ref["acc_norm"])
    for metric in ("acc,none", "acc_norm,none"):
        assert results["results"]["tiny_mc"][metric] == ref_results["results"]["tiny_mc"][metric]
    gen, ref_gen = samples["tiny_gen"], ref_samples["tiny_gen"]
    assert [s["resps"] for s in gen] == [s["resps"] for s in ref_gen]
    assert any(s["resps"][0][0].strip() for s in gen)  # something was generated


def test_tolerance_has_teeth(lm_eval_hf, hf_model, tiny) -> None:
    """A left-truncation one token off (the bug class the per-request check guards) moves a log-likelihood by
    far more than the tolerance: recomputed with transformers on the first documents' requests."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    for sample in lm_eval_hf[1]["tiny_mc"][:3]:
        text, ending = sample["arguments"][0]  # (context, continuation) of the first choice
        context, continuation = tok(text).input_ids, tok(ending).input_ids
        right, shifted = (_hf_loglikelihood(hf_model, c, continuation) for c in (context, context[1:]))
        assert _close(right, float(sample["resps"][0][0][0]))
        assert abs(shifted - right) > 10 * REL * abs(right)  # measured: 65x the tolerance on the first


def test_left_truncation_is_counted(launches) -> None:
    """The 300-word document's three choices exceed the 256 positions: each request is cut on the left (as
    lm-eval's hf backend does: the log-likelihoods above agree) and counted."""
    for stdout, results, _, _ in launches.values():
        assert results["config"]["truncated_requests"] == 3
        assert "3 request(s) were longer than the model's 256 positions" in stdout


# ---- the built-in tasks ------------------------------------------------------------------------------------
def _hf_loglikelihood(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits.float().log_softmax(-1)[0]
    rows = logits[len(context) - 1 :]
    return float(rows.gather(1, torch.tensor(continuation).unsqueeze(1)).sum())


def _mmlu_prompt(subject: str, dev: list[list[str]], row: list[str]) -> str:
    """docs/evaluation.md's MMLU prompt, written out independently of the package."""

    def block(r, answer):
        text = f"{r[0]}\nA. {r[1]}\nB. {r[2]}\nC. {r[3]}\nD. {r[4]}\nAnswer:"
        return text + (f" {r[5]}\n\n" if answer else "")

    title = subject.replace("_", " ")
    return (
        f"The following are multiple choice questions (with answers) about {title}.\n\n"
        + "".join(block(r, True) for r in dev)
        + block(row, False)
    )


@pytest.fixture(scope="module")
def mmlu_reference(tiny, hf_model) -> list[dict]:
    """transformers' log-likelihood of " A" .. " D" after each question's 5-shot prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    found = []
    for subject in ("anatomy", "world_history"):
        read = [
            list(csv.reader(open(tiny["mmlu"] / s / f"{subject}_{s}.csv", encoding="utf-8")))
            for s in ("dev", "test")
        ]
        for index, row in enumerate(read[1]):
            prompt = _mmlu_prompt(subject, read[0][:5], row)
            context = tok(prompt).input_ids
            lls = [
                _hf_loglikelihood(hf_model, context, tok(prompt + f" {x}").input_ids[len(context) :])
                for x in "ABCD"
            ]
            found.append(
                {"subject": subject, "index": index, "loglikelihoods": lls, "gold": "ABCD".index(row[5])}
            )
    return found


@pytest.mark.parametrize("layout", list(_LAYOUT))
def test_mmlu_scores_equal_transformers(launches, mmlu_reference, layout) -> None:
    stdout, _, _, builtin = launches[layout]
    mmlu = builtin["tasks"]["mmlu"]
    ours = sorted(mmlu["questions"], key=lambda q: (q["subject"], q["index"]))
    assert [(q["subject"], q["index"], q["gold"]) for q in ours] == [
        (r["subject"], r["index"], r["gold"]) for r in mmlu_reference
    ]
    for q, ref in zip(ours, mmlu_reference):
        assert all(_close(a, b) for a, b in zip(q["loglikelihoods"], ref["loglikelihoods"])), (q, ref)
        assert len(set(ref["loglikelihoods"])) == 4  # the letters are scored, not one unknown token
        best = max(range(4), key=ref["loglikelihoods"].__getitem__)
        assert q["prediction"] == best and q["correct"] == (best == ref["gold"])
    right = sum(q["correct"] for q in ours)
    assert mmlu["overall"]["correct"] == right and mmlu["overall"]["questions"] == 7
    assert f"{'overall':<13}  {7:>9}  {right:>7}  {right / 7:>8.4f}" in stdout


def test_gsm8k_outputs_equal_transformers_generate(launches, tiny, hf_model) -> None:
    """5 shots (GSM8K's default) from train.jsonl, 10 new tokens."""
    from transformers import AutoTokenizer

    from tests.inference.helpers import hf_continuation

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    records = launches["tp1"][3]["tasks"]["gsm8k"]["questions"]
    train = [json.loads(x) for x in (tiny["gsm8k"] / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tiny["gsm8k"] / "test.jsonl").read_text().splitlines()]
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train)
    for record in sorted(records, key=lambda r: r["index"]):
        prompt = shots + f"Question: {test[record['index']]['question']}\nAnswer:"
        new = hf_continuation(hf_model, tok, tok(prompt).input_ids, 10, tok.eos_token_id)
        text = tok.decode(new, skip_special_tokens=True)
        for stop in ("Question:", "\n\n"):
            text = text.split(stop)[0]
        assert record["output"] == text
        assert record["gold"] == test[record["index"]]["answer"].split("####")[-1].strip()


def test_a_bad_task_folder_stops_every_rank_before_the_model_loads(tiny, tmp_path) -> None:
    bad = write_mmlu(tmp_path / "mmlu", {"anatomy": 2})
    (bad / "dev" / "anatomy_dev.csv").unlink()
    with pytest.raises(AssertionError) as info:
        torchrun(EVALUATION, *model_flags(tiny["hf"]), "--tensor-model-parallel-size", "2", "--load",
                 tiny["ckpts"]["tp2"], "--tokenizer-name-or-path", tiny["tok"], "--task", "mmlu",
                 "--task-data-path", bad, nproc=2, timeout=120, env=OFFLINE_ENV)
    assert "anatomy_dev.csv: no such file; mmlu expects DIR/dev/<subject>_dev.csv" in str(info.value)
    assert "loaded checkpoint" not in str(info.value) and "Traceback" not in str(info.value)
