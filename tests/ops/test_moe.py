"""megatron-core's MoE layer on the CPU and gloo (mindspeed_llm.patches.moe, mindspeed_llm.ops.moe).

One torchrun launch (4 ranks, tests/ops/moe_worker.py) runs megatron's MoELayer at EP2 and TP2xEP2 with the
alltoall and allgather dispatchers and both expert layouts (SequentialMLP, the grouped GroupedMLP on
ops.moe.grouped_gemm), fp32, loaded from one set of full weights. Each rank's output, input gradient and
logged load-balancing loss are compared with plain torch written here: softmax router, top-k renormalised
(megatron's softmax after top-k), SwiGLU experts, and the Switch load-balancing loss
E / (k T^2) * sum_i count_i * sum_t p_ti over real tokens.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.launch import torchrun
from tests.helpers.paths import REPO_ROOT
from tests.ops.moe_worker import BATCH, CASES, EXPERTS, SEQ, TOPK, batch_for, full_weights

COEFF = 0.01
TOL = 1e-5


def reference(x: torch.Tensor, weights: dict, drop_expert: int | None = None) -> torch.Tensor:
    """[tokens, H] -> [tokens, H]: each token's top-k experts weighted by the softmax of its top-k logits."""
    logits = x @ weights["router"].t()
    top, index = logits.topk(TOPK, dim=-1)
    probs = top.softmax(-1)
    out = torch.zeros_like(x)
    for k in range(TOPK):
        for e in range(EXPERTS):
            rows = index[:, k] == e
            if e == drop_expert or not rows.any():
                continue
            h = x[rows]
            act = torch.nn.functional.silu(h @ weights["gate"][e].t()) * (h @ weights["up"][e].t())
            y = act @ weights["down"][e].t()
            out[rows] += probs[rows, k, None] * y
    return out


def aux_loss_parts(x: torch.Tensor, weights: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over tokens of the softmax scores [E], tokens routed per expert [E]) of [tokens, H]."""
    scores = (x @ weights["router"].t()).softmax(-1)
    counts = torch.zeros(EXPERTS).index_add_(0, scores.topk(TOPK, -1).indices.reshape(-1),
                                             torch.ones(x.shape[0] * TOPK))
    return scores.sum(0), counts


def hand_aux_loss(x: torch.Tensor, weights: dict) -> torch.Tensor:
    """The Switch load-balancing loss of megatron's aux_loss (without its coefficient) over [tokens, H]."""
    score_sums, counts = aux_loss_parts(x, weights)
    tokens = x.shape[0]
    return EXPERTS / (TOPK * tokens * tokens) * (score_sums * counts).sum()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe")
    torchrun(REPO_ROOT / "tests" / "ops" / "moe_worker.py", str(folder), nproc=4, timeout=600)
    return folder


def _rank_files(folder, name):
    files = sorted(folder.glob(f"{name}.rank*.pt"))
    assert len(files) == 4, f"{name}: {len(files)} rank files"
    return [torch.load(f) for f in files]


def _name(tp, ep, dispatcher, grouped, pad):
    return f"tp{tp}_ep{ep}_{dispatcher}_{'grouped' if grouped else 'sequential'}_pad{pad}"


@pytest.mark.parametrize("case", CASES, ids=[_name(*c) for c in CASES])
def test_moe_layer_matches_plain_torch(results, case):
    tp, ep, dispatcher, grouped, pad = case
    weights = full_weights()
    for got in _rank_files(results, _name(*case)):
        full = batch_for(got["dp_rank"], pad)  # [s, b, h]
        rows = full.shape[0] // tp
        mine = full[got["tp_rank"] * rows:(got["tp_rank"] + 1) * rows].clone().requires_grad_()
        out = reference(mine.reshape(-1, mine.shape[-1]), weights).view_as(mine)
        real = full[:SEQ].reshape(-1, full.shape[-1])  # padding tokens (after SEQ) are not real
        # megatron's aux loss on this rank: its tokens' scores times the routed counts over the TP group's
        # (real) tokens, coefficient included, scaled by 1 in backward.
        real_rows = min(rows, max(0, SEQ - got["tp_rank"] * rows))
        local = mine[:real_rows].reshape(-1, mine.shape[-1])
        scores = (local @ weights["router"].t()).softmax(-1).sum(0)
        _, counts = aux_loss_parts(real, weights)
        aux = COEFF * EXPERTS / (TOPK * real.shape[0] ** 2) * (scores * counts).sum()
        w = torch.arange(1, out.numel() + 1, dtype=out.dtype).view_as(out) / out.numel()
        ((out * w).sum() + aux).backward()
        assert (got["out"] - out.detach()).abs().max() < TOL
        assert (got["grad"] - mine.grad).abs().max() < TOL
        # the logged value (reduced over the TP group) is the hand-computed loss over the rank's real tokens
        assert abs(float(got["aux"]) - float(hand_aux_loss(real, weights))) < TOL


def test_padding_does_not_change_the_aux_loss(results):
    """Padding tokens marked in megatron's padding_mask leave the logged load-balancing loss unchanged."""
    weights = full_weights()
    padded = _rank_files(results, _name(1, 2, "alltoall", True, 4))
    plain = _rank_files(results, _name(1, 2, "alltoall", True, 0))
    for with_pad, without in zip(padded, plain):
        assert abs(float(with_pad["aux"]) - float(without["aux"])) < TOL
        # teeth: counting the padding tokens moves the loss by more than the tolerance
        full = batch_for(with_pad["dp_rank"], 4).reshape(-1, batch_for(0).shape[-1])
        assert abs(float(hand_aux_loss(full, weights)) - float(without["aux"])) > 100 * TOL


def test_a_dropped_expert_moves_the_output():
    """Teeth for the parity above: leaving one expert out changes the output by far more than TOL."""
    weights = full_weights()
    x = batch_for(0).reshape(-1, batch_for(0).shape[-1])
    assert (reference(x, weights) - reference(x, weights, drop_expert=1)).abs().max() > 1000 * TOL


@pytest.mark.parametrize("k, n", [(6, 5), (8, 12)])  # (8, 12): 16-byte sizes, torch._grouped_mm's path
def test_grouped_gemm_equals_per_expert_products(k, n):
    """Output and both gradients bit for bit equal to the experts' own products (an empty expert included);
    the transposed weights' layout and bf16 within their rounding."""
    from mindspeed_llm.ops.moe import _grouped_mm_fits, grouped_gemm

    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, k, generator=g, requires_grad=True)
    b = torch.randn(3, k, n, generator=g, requires_grad=True)
    assert _grouped_mm_fits(a, b) == (k % 4 == 0 and n % 4 == 0)
    sizes = torch.tensor([4, 0, 6])
    out = grouped_gemm(a, b, sizes)
    expected = torch.cat([a[:4] @ b[0], a[4:] @ b[2]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=g)
    got, want = torch.autograd.grad(out, (a, b), grad), torch.autograd.grad(expected, (a, b), grad)
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    assert got[1][1].abs().sum() == 0 and got[1][0].abs().sum() > 0
    bt = b.detach().transpose(1, 2).contiguous()
    torch.testing.assert_close(grouped_gemm(a.detach(), bt, sizes, trans_b=True), expected.detach())
    bf = grouped_gemm(a.detach().bfloat16(), b.detach().bfloat16(), [4, 0, 6])
    assert bf.dtype is torch.bfloat16
    torch.testing.assert_close(bf.float(), expected.detach(), rtol=2e-2, atol=5e-2)
    with pytest.raises(ValueError, match="3 expert weights"):
        grouped_gemm(a, b, [10])


def test_patches_are_registered_with_descriptions():
    import mindspeed_llm

    text = mindspeed_llm.describe()
    for target in ("moe_utils.maybe_move_tensor_to_cpu", "grouped_gemm_util.ops", "GroupedMLP.forward",
                   "mappings._gather_along_first_dim", "moe_utils.router_gating_linear"):
        assert target in text, target
    assert BATCH == 2  # the worker's batch shape the reference slices
