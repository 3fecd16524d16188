"""LoRA DPO equals TRL + peft and holds one model copy; a resumed DPO run is bitwise the unbroken one, its
reference still the initial weights; a resume that cannot find them is one line.

One torchrun launch (tests/dpo/dpo_worker.py, DP2) runs, in order: LoRA DPO from a converted peft adapter
(non-zero B, so the policy differs from its base: the reference is the base with the adapters off, TRL's
DPOTrainer given the peft model and the base model as ``ref_model``); a 4-step full DPO run saving at 2 and
4; its resume from iteration 2 with ``--ref-model`` the converted start; the same resume with the reference
at iteration 2 of the run (the bug of a reference that moved: its rewards differ, the test's teeth); and the
resume without ``--ref-model`` and a ``--ref-model`` of another shape, which must each stop with one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mindspeed_llm.convert.convert import ConvertOptions, convert
from mindspeed_llm.models.families import ModelConfig
from tests.conftest import torchrun
from tests.dpo.helpers import dpo_flags, make_pairs, write_pairwise_data
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import convert_hf_to_mg, load_hf_model, make_hf_model
from tests.models.lora_helpers import load_peft_model, make_peft_adapter
from tests.models.test_lora import _fused_reference

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("dpo_worker.py")
REL = 1e-5
LORA = (
    "--lora-target-modules",
    "linear_qkv",
    "linear_proj",
    "linear_fc1",
    "linear_fc2",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_lora_resume")
    hf = make_hf_model(root / "hf", "qwen2", num_layers=2, initializer_range=0.2)
    adapter = root / "peft"
    make_peft_adapter(str(hf), str(adapter))
    mg_lora = convert(
        ConvertOptions(
            progress=False,
            load_dir=str(hf),
            save_dir=str(root / "mg_lora"),
            load_model_type="hf",
            save_model_type="mg",
            add_qkv_bias=True,
            lora_load=str(adapter),
        )
    )
    mg = convert_hf_to_mg(hf, root / "mg", 1, 1)
    other = convert_hf_to_mg(
        make_hf_model(root / "other_hf", "qwen2", num_layers=2, intermediate_size=48), root / "other", 1, 1
    )  # a reference of another shape
    pairs = make_pairs()
    data = write_pairwise_data(root / "data" / "pairs", pairs)
    a, b, c = root / "run_a", root / "run_b", root / "run_c"
    trained = dict(lr=0.01, iters=4)
    spec = [
        {
            "name": "lora",
            "argv": dpo_flags(
                hf,
                data,
                extra=(
                    "--load",
                    str(mg_lora),
                    "--lora-load",
                    str(root / "lora_save"),
                    "--save",
                    str(root / "lora_save"),
                    *LORA,
                ),
            ),
        },
        {
            "name": "a",
            "argv": dpo_flags(
                hf,
                data,
                **trained,
                extra=("--load", str(mg), "--finetune", "--save", str(a), "--save-interval", "2"),
            ),
        },
        {
            "name": "b",
            "argv": dpo_flags(
                hf,
                data,
                **trained,
                extra=("--load", str(a), "--ckpt-step", "2", "--ref-model", str(mg), "--save", str(b)),
            ),
        },
        {
            "name": "moved_reference",
            "argv": dpo_flags(
                hf,
                data,
                **trained,
                extra=(
                    "--load",
                    str(a),
                    "--ckpt-step",
                    "2",
                    "--ref-model",
                    str(a),
                    "--refer-model-iter",
                    "2",
                    "--save",
                    str(c),
                ),
            ),
        },
        {
            "name": "other_shape",
            "argv": dpo_flags(hf, data, extra=("--load", str(mg), "--finetune", "--ref-model", str(other))),
            "expect_failure": True,
        },
        {
            "name": "no_reference",
            "argv": dpo_flags(
                hf, data, **trained, extra=("--load", str(a), "--ckpt-step", "2", "--save", str(c))
            ),
            "expect_failure": True,
        },
    ]
    out = root / "out"
    out.mkdir()
    (root / "spec.json").write_text(json.dumps(spec))
    result = torchrun(WORKER, str(root / "spec.json"), str(out), nproc=2, timeout=600)
    return {
        "root": root,
        "hf": hf,
        "adapter": adapter,
        "pairs": pairs,
        "out": out,
        "stdout": result.stdout + result.stderr,
    }


def _load(runs, name: str) -> dict:
    return torch.load(runs["out"] / f"{name}_tp0_pp0.pt", weights_only=True)


def test_lora_dpo_equals_trl_with_peft(runs):
    from tests.dpo.trl_reference import trl_dpo_step

    hf, adapter = str(runs["hf"]), str(runs["adapter"])
    trl = trl_dpo_step(
        load_peft_model(hf, adapter, trainable=True), load_hf_model(hf), hf, runs["pairs"], "sigmoid"
    )
    ours = _load(runs, "lora")
    assert abs(ours["reported"]["loss"] - trl["loss"]) <= REL * trl["loss"]
    scale = abs(trl["metrics"]["rewards/chosen"]) + abs(trl["metrics"]["rewards/rejected"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        want = trl["metrics"][key]
        assert abs(ours["reported"][key] - want) <= REL * (
            scale if key.startswith("rewards") else abs(want)
        ), key
    assert scale > 1000 * REL  # the adapter moves the policy away from its base: the reference matters
    by_module = {}
    for name, grad in trl["grads"].items():
        m = re.search(r"layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.", name)
        by_module[int(m.group(1)), m.group(2), m.group(3)] = grad
    cfg = ModelConfig.from_hf_config(str(runs["hf"] / "config.json"))
    got = ours["grads"]
    assert got and all(".lora_" in k for k in got)  # only the adapters train
    for layer in range(cfg.num_layers):
        for key, want in _fused_reference(by_module, cfg, layer).items():
            err = rel_err(got[f"decoder.layers.{layer}.{key}.weight"], want)
            assert err <= REL, f"layer {layer} {key}: relative difference {err:.2e}"


def test_lora_dpo_holds_one_model_copy(runs):
    """The reference is the policy's own chunks with the adapters off: no second model is built."""
    text = runs["stdout"]
    assert "reference model: the base model with the LoRA adapters off (no second copy)" in text
    assert text.count("reference model: --ref-model") == 2  # the full runs below do build one (b, moved)


def test_resume_is_bitwise_with_the_initial_reference(runs):
    a, b = _load(runs, "a")["steps"], _load(runs, "b")["steps"]
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [3, 4]
    for it in (3, 4):
        assert b[it] == a[it], (it, b[it], a[it])  # every logged value, bit for bit
    assert a[4]["rewards/chosen"] != 0.0  # the policy moved away from the reference
    moved = _load(runs, "moved_reference")["steps"]
    # Teeth: a reference that is the run's iteration 2 instead of its start changes the rewards at once.
    assert abs(moved[3]["rewards/margins"] - a[3]["rewards/margins"]) > 1000 * REL * abs(
        a[3]["rewards/margins"]
    )


def test_bad_references_are_one_line_each(runs):
    """A reference of another shape, and a resume whose initial weights cannot be found."""
    lines = [line for line in runs["stdout"].splitlines() if "error:" in line]
    assert len(lines) == 2, runs["stdout"][-3000:]
    assert "is another model than the one trained" in lines[0] and "--ref-model" in lines[0]
    assert "resumes iteration 2" in lines[1] and "--ref-model" in lines[1]
    assert "Traceback" not in runs["stdout"]
