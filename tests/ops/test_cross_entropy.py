"""Blocked vocab-parallel cross entropy against a float64 log-softmax and megatron-core's own function,
at TP1 here and at TP2 under torchrun (each rank holding half of the vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.cross_entropy import _VocabParallelCrossEntropy

import mindspeed_llm
from mindspeed_llm.ops import cross_entropy
from mindspeed_llm.ops.cross_entropy import chunked_vocab_parallel_cross_entropy, vocab_parallel_cross_entropy
from tests.conftest import torchrun
from tests.ops.megatron_env import single_process_model_parallel

# 50,000 columns give 5 rows per block; 7 x 3 = 21 rows end on a partial block.
S, B, V = 7, 3, 50_000


def _inputs(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(S, B, V, generator=gen, dtype=torch.float64) * 4).to(dtype)
    target = torch.randint(0, V, (S, B), generator=gen)
    grad_out = torch.rand(S, B, generator=gen, dtype=torch.float64)
    return logits, target, grad_out


def _float64_reference(logits, target, grad_out):
    x = logits.double().requires_grad_()
    loss = -torch.log_softmax(x, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    (grad,) = torch.autograd.grad(loss, x, grad_out)
    return loss.detach(), grad


def test_block_size_splits_these_inputs_unevenly():
    rows = cross_entropy._rows_per_block(V)
    assert 1 < rows < S * B and (S * B) % rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_float64_and_megatron(dtype):
    logits, target, grad_out = _inputs(dtype)
    want_loss, want_grad = _float64_reference(logits, target, grad_out)
    with single_process_model_parallel():
        x = logits.clone().requires_grad_()
        loss = chunked_vocab_parallel_cross_entropy(x, target)
        loss.backward(grad_out.float())
        y = logits.clone().requires_grad_()
        megatron_loss = _VocabParallelCrossEntropy.apply(y, target, 0.0)
        megatron_loss.backward(grad_out.float())
    assert loss.dtype == torch.float32 and loss.shape == (S, B)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss, megatron_loss, rtol=1e-6, atol=1e-5)
    if dtype == torch.float32:
        torch.testing.assert_close(x.grad.double(), want_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)
    else:  # both round a float32 gradient to bf16 once
        torch.testing.assert_close(x.grad.double(), want_grad, rtol=2 ** -7, atol=1e-6)
        torch.testing.assert_close(x.grad.float(), y.grad.float(), rtol=2 ** -7, atol=1e-6)


def test_float32_logits_are_not_modified():
    logits, target, _ = _inputs(torch.float32)
    kept = logits.clone()
    with single_process_model_parallel():
        chunked_vocab_parallel_cross_entropy(logits, target)
    assert torch.equal(logits, kept)  # megatron's own subtracts the max from float32 logits in place


def test_label_smoothing_goes_to_megatron():
    logits, target, _ = _inputs(torch.float32)
    with single_process_model_parallel():
        ours = vocab_parallel_cross_entropy(logits.clone(), target, label_smoothing=0.1)
        megatron = _VocabParallelCrossEntropy.apply(logits.clone(), target, 0.1)
    torch.testing.assert_close(ours, megatron, rtol=0, atol=0)


def test_cpu_base_patch_routes_megatron_loss_through_it():
    """LanguageModule calls ``tensor_parallel.vocab_parallel_cross_entropy``: on the CPU that is ours."""
    assert mindspeed_llm.DEVICE == "cpu"
    fn = tensor_parallel.vocab_parallel_cross_entropy
    assert fn is tensor_parallel.cross_entropy.vocab_parallel_cross_entropy
    assert (
        fn.__wrapped__.__module__ == "megatron.core.tensor_parallel.cross_entropy"
        and fn is not fn.__wrapped__
    )
    logits, target, _ = _inputs(torch.float32)
    with single_process_model_parallel():
        torch.testing.assert_close(
            fn(logits.clone(), target), chunked_vocab_parallel_cross_entropy(logits, target)
        )


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory):
    """One TP2 launch: the blocked loss of given logits, and the fused output layer + loss
    (test_linear_cross_entropy's inputs, blocks of 4 tokens)."""
    from tests.ops.test_linear_cross_entropy import linear_inputs

    folder = tmp_path_factory.mktemp("cross_entropy_tp2")
    logits, target, grad_out = _inputs(torch.float32)
    hidden, weight, linear_target, mask = linear_inputs()
    linear = {"hidden": hidden, "weight": weight, "target": linear_target, "mask": mask, "chunk": 4}
    torch.save({"logits": logits, "target": target, "grad_out": grad_out, "linear": linear},
               folder / "inputs.pt")
    torchrun(Path(__file__).with_name("cross_entropy_worker.py"), str(folder), nproc=2)
    return folder


@pytest.mark.slow
def test_tensor_parallel_two_ranks_match_float64(tp2_run):
    """Each of two ranks holds half of the vocabulary; losses and gradient slices equal float64's."""
    logits, target, grad_out = _inputs(torch.float32)
    want_loss, want_grad = _float64_reference(logits, target, grad_out)
    for rank in range(2):
        got = torch.load(tp2_run / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"].double(), want_loss, rtol=1e-6, atol=1e-5)
        half = V // 2
        torch.testing.assert_close(got["grad"].double(), want_grad[..., rank * half:(rank + 1) * half],
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fused_output_layer_loss_at_two_ranks_equals_megatron_at_one(tp2_run):
    """The output layer fused into the loss with the (padded) vocabulary split over two ranks: every rank's
    loss, the all-reduced hidden-state gradient and each rank's weight rows' gradient equal megatron-core's
    unfused loss on the whole vocabulary (test_linear_cross_entropy's reference)."""
    from tests.helpers.numerics import rel_err
    from tests.ops.test_linear_cross_entropy import TOL, _megatron, linear_inputs

    hidden, weight, target, mask = linear_inputs()
    want_loss, want_gh, want_gw = _megatron(hidden, weight, target, mask)
    rows = weight.shape[0] // 2
    valid = target >= 0
    for rank in range(2):
        got = torch.load(tp2_run / f"rank{rank}.pt")["linear"]
        assert rel_err(got["loss"][valid], want_loss[valid].double()) <= TOL
        assert rel_err(got["hidden_grad"], want_gh.double()) <= TOL
        assert rel_err(got["weight_grad"], want_gw[rank * rows:(rank + 1) * rows].double()) <= TOL
