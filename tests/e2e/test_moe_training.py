"""MoE pretraining from random init at EP2 (pretrain_gpt.py, gloo): the router's load-balancing loss logged
apart from the lm loss, resume bitwise with dropout, the distributed optimizer and grouped experts, and a
launch at another expert-parallel size refused with one line.

The loss itself is checked against a hand computation at the layer level (tests/ops/test_moe.py); the lm
loss against transformers in tests/e2e/test_moe_loss_parity.py.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.e2e.pretrain_helpers import (
    loss_strings,
    make_indexed_dataset,
    start_pretrain,
    train_flags,
)
from tests.e2e.test_moe_loss_parity import moe_model_flags
from tests.helpers.tiny_moe import make_moe_hf_model

pytestmark = pytest.mark.slow

_AUX = re.compile(r"iteration\s+(\d+)/.*? load_balancing_loss: (\S+) \|")


def aux_strings(stdout: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in _AUX.finditer(stdout)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_training")
    hf = make_moe_hf_model(root / "hf", "qwen3_moe", num_layers=2, norm_topk_prob=True)
    data = make_indexed_dataset(root / "data" / "corpus")
    saved = root / "saved"

    def flags(*more):
        return [*moe_model_flags(hf), *train_flags(str(data), iters=4, gbs=2, seq=32),
                "--expert-model-parallel-size", "2", "--moe-grouped-gemm", "--use-distributed-optimizer",
                "--moe-router-load-balancing-type", "aux_loss", "--moe-aux-loss-coeff", "0.01",
                "--hidden-dropout", "0.1", "--attention-dropout", "0.1", *more]

    out = {"full": start_pretrain(*flags("--save", str(saved), "--save-interval", "2"), nproc=2,
                                  timeout=300).result().stdout}
    out["resume"] = start_pretrain(*flags("--load", str(saved), "--ckpt-step", "2"), nproc=2,
                                   timeout=300).result().stdout
    one = flags()
    one[one.index("--expert-model-parallel-size") + 1] = "1"
    # one process, forked as the runs above are
    out["refused"] = start_pretrain(*one, "--load", str(saved), "--ckpt-step", "2", nproc=1,
                                    timeout=240).result(check=False)
    return out


def test_aux_loss_is_logged_apart_from_the_lm_loss(runs):
    lm, aux = loss_strings(runs["full"]), aux_strings(runs["full"])
    assert sorted(lm) == sorted(aux) == [1, 2, 3, 4], runs["full"][-3000:]
    for value in map(float, aux.values()):
        # The Switch loss without its coefficient: 1 for a perfectly even routing, at most E / k = 2 here.
        assert math.isfinite(value) and 0.9 < value <= 2.0, aux


def test_resume_at_ep2_with_dropout_and_the_distributed_optimizer_is_bitwise(runs):
    resumed, unbroken = loss_strings(runs["resume"]), loss_strings(runs["full"])
    assert sorted(resumed) == [3, 4], runs["resume"][-3000:]
    assert resumed == {step: unbroken[step] for step in (3, 4)}
    assert aux_strings(runs["resume"]) == {step: aux_strings(runs["full"])[step] for step in (3, 4)}


def test_a_launch_at_another_expert_parallel_size_is_refused_with_one_line(runs):
    refused = runs["refused"]
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    assert "EP=2" in errors[0] and "--expert-model-parallel-size 1" in errors[0], errors[0]
    assert "--target-expert-parallel-size 1" in errors[0], errors[0]
