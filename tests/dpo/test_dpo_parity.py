"""posttrain_gpt.py --stage dpo equals TRL's DPOTrainer (trl 1.16) on transformers' model: the first lr-0 fp32
step's loss, rewards, log-probabilities and every gradient, relative 1e-5, for sigmoid, hinge and IPO, at
DP2 (TP1), TP2 (sequence parallel, full recompute, distributed optimizer) and PP2 (--no-pad-to-seq-lengths:
variable shapes through the pipeline), plus CP2 for sigmoid; SimPO and ORPO against TRL's implementation of
their papers' losses (CPOTrainer.cpo_loss with loss_type simpo, ORPOTrainer.odds_ratio_loss) with gradients.

The reference is a converted checkpoint of a perturbed copy of the HF model (--ref-model): it differs from
the policy, and a reference equal to the policy gives another loss (the test's teeth). One torchrun launch
runs every case one after another (tests/dpo/dpo_worker.py: the real posttrain_gpt.py, its first step's
gradients read where the trainer checks them). TRL's gradients are laid out per TP/PP rank by
convert_ckpt.py (an HF folder whose weights are the gradients), so each rank's gradients compare by name.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from mindspeed_llm.runtime.checkpoint import layout
from tests.conftest import torchrun
from tests.dpo.helpers import dpo_flags, grads_as_hf_model, make_pairs, perturbed_copy, write_pairwise_data
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import convert_hf_to_mg, load_hf_model, make_hf_model

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("dpo_worker.py")
REL = 1e-5
LOSSES = ("sigmoid", "hinge", "ipo")
LAYOUTS = {"dp2": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "cp2": (1, 1)}
LAYOUT_FLAGS = {
    "dp2": (),
    "tp2": (
        "--tensor-model-parallel-size",
        "2",
        "--sequence-parallel",
        "--use-distributed-optimizer",
        "--recompute-granularity",
        "full",
        "--recompute-method",
        "uniform",
        "--recompute-num-layers",
        "1",
    ),
    "pp2": ("--pipeline-model-parallel-size", "2", "--no-pad-to-seq-lengths", "--pad-to-multiple-of", "4"),
    "cp2": ("--context-parallel-size", "2"),
}
CASES = [(loss, name) for loss in LOSSES for name in ("dp2", "tp2", "pp2")] + [("sigmoid", "cp2")]
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_parity")
    hf = make_hf_model(root / "hf", "qwen2", num_layers=2, initializer_range=0.2)
    ref_hf = perturbed_copy(hf, root / "ref_hf")
    policy = {
        tp_pp: convert_hf_to_mg(hf, root / f"mg_tp{tp_pp[0]}pp{tp_pp[1]}", *tp_pp)
        for tp_pp in set(LAYOUTS.values())
    }
    reference = {
        tp_pp: convert_hf_to_mg(ref_hf, root / f"ref_tp{tp_pp[0]}pp{tp_pp[1]}", *tp_pp)
        for tp_pp in set(LAYOUTS.values())
    }
    pairs = make_pairs()
    data = write_pairwise_data(root / "data" / "pairs", pairs)
    runs = []
    for loss, name in CASES:
        tp_pp = LAYOUTS[name]
        extra = (
            "--load",
            str(policy[tp_pp]),
            "--ref-model",
            str(reference[tp_pp]),
            "--finetune",
            *LAYOUT_FLAGS[name],
        )
        runs.append({"name": f"{loss}_{name}", "argv": dpo_flags(hf, data, loss=loss, extra=extra)})
    for loss in ("simpo", "orpo"):
        extra = ("--load", str(policy[1, 1]), "--finetune")
        runs.append({"name": f"{loss}_dp2", "argv": [*dpo_flags(hf, data, loss=loss, extra=extra)]})
    out = root / "out"
    out.mkdir()
    (root / "spec.json").write_text(json.dumps(runs))
    torchrun(WORKER, str(root / "spec.json"), str(out), nproc=2, timeout=600)
    return {"root": root, "hf": hf, "ref_hf": ref_hf, "pairs": pairs, "out": out, "trl": {}, "grads": {}}


def trl_reference(parity, loss: str) -> dict:
    """TRL's step for ``loss`` (computed once per loss type)."""
    from tests.dpo.trl_reference import trl_dpo_step

    if loss not in parity["trl"]:
        hf, ref_hf = parity["hf"], parity["ref_hf"]
        parity["trl"][loss] = trl_dpo_step(
            load_hf_model(str(hf)), load_hf_model(str(ref_hf)), str(hf), parity["pairs"], loss
        )
    return parity["trl"][loss]


def reference_grads(parity, key: str, hf_grads: dict, tp: int, pp: int) -> dict:
    """HF-named gradients laid out for (``tp``, ``pp``) by convert_ckpt.py: {(tp rank, pp rank): state}."""
    if (key, tp, pp) not in parity["grads"]:
        root = parity["root"]
        folder = root / f"grad_{key}"
        if not folder.exists():
            grads_as_hf_model(parity["hf"], hf_grads, folder)
        mg = convert_hf_to_mg(folder, root / f"grad_{key}_tp{tp}pp{pp}", tp, pp)
        parity["grads"][key, tp, pp] = {
            (t, p): layout.load_rank_state(str(mg), None, t, p, pp)["model"]
            for t in range(tp)
            for p in range(pp)
        }
    return parity["grads"][key, tp, pp]


def assert_grads(parity, case: str, key: str, hf_grads: dict, tp: int, pp: int) -> None:
    want = reference_grads(parity, key, hf_grads, tp, pp)
    for (t, p), state in want.items():
        got = torch.load(parity["out"] / f"{case}_tp{t}_pp{p}.pt", weights_only=True)["grads"]
        assert got, f"{case}: no gradients written on TP rank {t}, PP rank {p}"
        for name, grad in got.items():
            err = rel_err(grad, state[name])
            assert err <= REL, (
                f"{case} TP rank {t} PP rank {p} {name}: gradient relative difference {err:.2e}"
            )


def reported(parity, case: str, pp: int) -> dict:
    return torch.load(parity["out"] / f"{case}_tp0_pp{pp - 1}.pt", weights_only=True)["reported"]


def assert_close(got: float, want: float, what: str, scale: float | None = None) -> None:
    scale = abs(want) if scale is None else scale
    assert abs(got - want) <= REL * max(scale, 1e-6), f"{what}: {got} vs {want}"


@pytest.mark.parametrize("loss,name", CASES)
def test_first_step_equals_trl(parity, loss, name):
    tp, pp = LAYOUTS[name]
    trl = trl_reference(parity, loss)
    ours = reported(parity, f"{loss}_{name}", pp)
    assert_close(ours["loss"], trl["loss"], f"{loss} {name} loss")
    reward_scale = max(abs(trl["metrics"]["rewards/chosen"]), abs(trl["metrics"]["rewards/rejected"]))
    for key in METRICS:
        assert_close(
            ours[key],
            trl["metrics"][key],
            f"{loss} {name} {key}",
            scale=reward_scale if key.startswith("rewards/") else None,
        )
    assert_grads(parity, f"{loss}_{name}", loss, trl["grads"], tp, pp)


def test_the_reference_moves_the_loss(parity):
    """Teeth: the reference here differs from the policy enough that using the policy instead (the bug of a
    reference that follows training) moves the loss far beyond the tolerance."""
    from tests.dpo.trl_reference import trl_dpo_step

    hf = parity["hf"]
    with_policy = trl_dpo_step(
        load_hf_model(str(hf)), load_hf_model(str(hf)), str(hf), parity["pairs"], "sigmoid"
    )
    ours = reported(parity, "sigmoid_dp2", 1)["loss"]
    assert abs(with_policy["loss"] - ours) > 1000 * REL * ours


def _hf_sequence_logps(model, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' per-pair token-mean log-probabilities of both answers (with gradients)."""
    out = {}
    for side in ("chosen", "rejected"):
        means = []
        for pair in pairs:
            ids = torch.tensor([pair["prompt_ids"] + pair[f"{side}_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = ids[0, 1:]
            logp = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
            means.append(logp[len(pair["prompt_ids"]) - 1 :].mean())
        out[side] = torch.stack(means)
    return out["chosen"], out["rejected"]


def _trl_reference_free(
    loss: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float = 0.1, gamma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's SimPO (CPOTrainer.cpo_loss, loss_type simpo) or ORPO (ORPOTrainer.odds_ratio_loss plus the chosen
    answer's mean token loss, per pair) on the given log-probabilities: (loss, the two rewards)."""
    if loss == "simpo":
        from trl.experimental.cpo import CPOTrainer

        me = types.SimpleNamespace(
            beta=beta,
            label_smoothing=0.0,
            loss_type="simpo",
            simpo_gamma=gamma,
            alpha=0.0,
            accelerator=types.SimpleNamespace(device=chosen.device),
        )
        losses, cr, rr = CPOTrainer.cpo_loss(me, chosen, rejected)
        return losses.mean(), cr, rr
    from trl.experimental.orpo import ORPOTrainer

    me = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device=chosen.device))
    losses, cr, rr, _, _ = ORPOTrainer.odds_ratio_loss(me, chosen, rejected)
    return (-chosen).mean() - losses.mean(), cr, rr


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_equal_trl(parity, loss):
    model = load_hf_model(str(parity["hf"]))
    model.train()
    chosen, rejected = _hf_sequence_logps(model, parity["pairs"])
    value, chosen_rewards, rejected_rewards = _trl_reference_free(loss, chosen, rejected)
    value.backward()
    ours = reported(parity, f"{loss}_dp2", 1)
    assert_close(ours["loss"], float(value), f"{loss} loss")
    scale = float(chosen_rewards.abs().max())
    assert_close(ours["rewards/chosen"], float(chosen_rewards.mean()), f"{loss} rewards/chosen", scale)
    assert_close(ours["rewards/rejected"], float(rejected_rewards.mean()), f"{loss} rewards/rejected", scale)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert_grads(parity, f"{loss}_dp2", loss, grads, 1, 1)
