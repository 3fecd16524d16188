"""evaluation.py's lm-eval backend on a mixture-of-experts checkpoint at EP2 against lm-eval's ``hf`` backend.

One tiny random Qwen3-MoE (4 experts, top-2 renormalised by ``norm_topk_prob``), converted to EP2; one launch
(2 processes: each request is broadcast from rank 0 and both EP ranks run the forward, the allgather
dispatcher exchanging their tokens) runs two local lm-eval tasks of tests/evaluation/fixtures.py (multiple
choice and generate_until; the rolling perplexity task runs the same forward as the first and is left to the
dense tests). Every request's log-likelihood equals lm-eval's own ``hf`` backend on the HF model (fp32,
relative 1e-5), so acc and acc_norm are the same; every ``generate_until`` output is the same string. Teeth:
the HF model with its top-k probabilities left unrenormalised moves the log-likelihoods by far more than the
tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e.test_moe_loss_parity import moe_model_flags
from tests.evaluation.fixtures import OFFLINE_ENV, save_eval_tokenizer, write_lm_eval_tasks
from tests.helpers.launch import torchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_moe import make_moe_hf_model

pytestmark = pytest.mark.slow

EVALUATION = REPO_ROOT / "evaluation.py"
LM_TASKS = ("tiny_mc", "tiny_gen")
BATCH = 4
REL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from mindspeed_llm.convert.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("evaluation_moe")
    hf = make_moe_hf_model(root / "hf", "qwen3_moe", num_layers=2, norm_topk_prob=True)
    save_eval_tokenizer(root / "tok")
    ep2 = convert(ConvertOptions("hf", "mg", str(hf), str(root / "ep2"), target_ep=2, progress=False))
    return {"root": root, "hf": hf, "tok": root / "tok", "ep2": ep2,
            "lm_eval": write_lm_eval_tasks(root / "lm_eval", root / "datasets_cache")}


def _samples(folder: Path) -> dict:
    samples = {}
    for task in LM_TASKS:
        (path,) = folder.rglob(f"samples_{task}_*.jsonl")
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                               key=lambda r: r["doc_id"])
    return samples


@pytest.fixture(scope="module")
def launch(tiny) -> tuple[dict, dict]:
    """lm-eval's results JSON and samples of evaluation.py at EP2."""
    out = tiny["root"] / "out_ep2"
    torchrun(EVALUATION, *moe_model_flags(tiny["hf"]), "--expert-model-parallel-size", "2", "--load",
             tiny["ep2"], "--tokenizer-name-or-path", tiny["tok"], "--lm-eval-tasks", ",".join(LM_TASKS),
             "--lm-eval-include-path", tiny["lm_eval"], "--log-samples", "--evaluation-batch-size", BATCH,
             "--output-path", out, nproc=2, timeout=400, env=OFFLINE_ENV)
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text()), _samples(out)


def _hf_model(tiny, **config_changes):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny["hf"])
    for key, value in config_changes.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(tiny["hf"], config=config, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(tiny) -> tuple[dict, dict]:
    """lm-eval's own ``hf`` backend on the HF model, same tasks, batch size and window."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.update(OFFLINE_ENV)
    lm = HFLM(pretrained=_hf_model(tiny), tokenizer=str(tiny["tok"]), batch_size=BATCH, max_length=256,
              device="cpu")
    # only the tasks' folder indexed: lm-eval's registry (15,000 YAML files) would cost 15 CPU s
    manager = TaskManager(include_path=str(tiny["lm_eval"]), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=list(LM_TASKS), log_samples=True, task_manager=manager)
    samples = results.pop("samples")
    return results, {t: sorted(samples[t], key=lambda r: r["doc_id"]) for t in LM_TASKS}


def _loglikelihoods(samples: dict) -> list[float]:
    """Every tiny_mc request's log-likelihood, in document and choice order."""
    return [float(r[0][0]) for s in samples["tiny_mc"] for r in s["resps"]]


def _relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def test_lm_eval_at_ep2_equals_hf_backend(launch, reference) -> None:
    (results, samples), (ref_results, ref_samples) = launch, reference
    assert [len(samples[t]) for t in LM_TASKS] == [len(ref_samples[t]) for t in LM_TASKS]
    assert _relative(_loglikelihoods(samples), _loglikelihoods(ref_samples)) <= REL
    greedy = [[str(r[0][1]) for r in s["resps"]] for s in samples["tiny_mc"]]  # is each choice the argmax
    assert greedy == [[str(r[0][1]) for r in s["resps"]] for s in ref_samples["tiny_mc"]]
    for ours, ref in zip(samples["tiny_mc"], ref_samples["tiny_mc"]):
        assert (ours["acc"], ours["acc_norm"]) == (ref["acc"], ref["acc_norm"])
    for metric in ("acc,none", "acc_norm,none"):
        assert results["results"]["tiny_mc"][metric] == ref_results["results"]["tiny_mc"][metric]
    assert [s["resps"] for s in samples["tiny_gen"]] == [s["resps"] for s in ref_samples["tiny_gen"]]
    assert any(s["resps"][0][0].strip() for s in samples["tiny_gen"])  # something was generated


def test_the_tolerance_has_teeth(tiny, reference) -> None:
    """The router's renormalisation ignored (norm_topk_prob off) moves the first documents' log-likelihoods
    (recomputed with transformers as lm-eval's hf backend scores them) by far more than the tolerance."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    models = {"right": _hf_model(tiny), "unnormalised": _hf_model(tiny, norm_topk_prob=False)}
    for sample in reference[1]["tiny_mc"][:3]:
        text, ending = sample["arguments"][0]  # (context, continuation) of the first choice
        context, continuation = tok(text).input_ids, tok(ending).input_ids
        ids = torch.tensor([context + continuation])
        found = {}
        for name, model in models.items():
            with torch.no_grad():
                rows = model(ids[:, :-1]).logits.float().log_softmax(-1)[0, len(context) - 1:]
            found[name] = float(rows.gather(1, torch.tensor(continuation).unsqueeze(1)).sum())
        assert _relative([found["right"]], [float(sample["resps"][0][0][0])]) <= REL
        assert _relative([found["unnormalised"]], [found["right"]]) > 20 * REL
