"""The output layer fused into the cross entropy (``--loss-compute-mode chunk``) against megatron-core's own
``vocab_parallel_cross_entropy`` after ``F.linear`` and transformers' causal-LM loss: the loss and the
gradients of the hidden states and of the output weight, with a padded vocabulary, ignored targets (-100)
and a loss mask, over blocks that split the tokens unevenly; the model-level patch against megatron's
unfused postprocess (trained and frozen output layer, tied embeddings, LoRA). TP2 (each rank half of the
vocabulary) runs in test_cross_entropy.py's launch.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel.cross_entropy import _VocabParallelCrossEntropy

from mindspeed_llm.ops.linear_cross_entropy import linear_cross_entropy
from tests.helpers.numerics import rel_err
from tests.ops.megatron_env import single_process_model_parallel

S, B, H, VOCAB, PADDED = 7, 3, 16, 120, 128  # 21 tokens; the last 8 weight rows are vocabulary padding
TOL = 1e-5


def linear_inputs(seed: int = 0):
    """Hidden states, output weight (padded rows included), targets with -100 at some positions, a 0/1 loss
    mask (0 where the target is -100 and at a few more positions)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, B, H, generator=gen)
    weight = torch.randn(PADDED, H, generator=gen) * 0.5
    target = torch.randint(0, VOCAB, (S, B), generator=gen)
    target[0, 1] = target[4, 2] = -100
    mask = (target >= 0).float()
    mask[2, 0] = 0.0
    return hidden, weight, target, mask


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pretrain_gpt.py's loss function: the loss mask times the per-token loss, over the mask's count."""
    return (loss * mask).sum() / mask.sum()


def _grads(fn, hidden, weight, mask):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w)
    _masked_mean(loss, mask).backward()
    return loss.detach(), h.grad, w.grad


def _megatron(hidden, weight, target, mask):
    with single_process_model_parallel():
        return _grads(
            lambda h, w: _VocabParallelCrossEntropy.apply(torch.nn.functional.linear(h, w), target, 0.0),
            hidden, weight, mask)


@pytest.mark.parametrize("chunk", [4, 1024])  # 21 tokens: five blocks and a partial one; one block
def test_equals_megatron_and_transformers(chunk):
    from transformers.loss.loss_utils import ForCausalLMLoss

    hidden, weight, target, mask = linear_inputs()
    loss, gh, gw = _grads(lambda h, w: linear_cross_entropy(h, w, target, chunk), hidden, weight, mask)
    want_loss, want_gh, want_gw = _megatron(hidden, weight, target, mask)
    assert loss.shape == (S, B) and loss.dtype == torch.float32
    valid = target >= 0
    assert rel_err(loss[valid], want_loss[valid].double()) <= TOL
    assert rel_err(gh, want_gh.double()) <= TOL and rel_err(gw, want_gw.double()) <= TOL

    # transformers' loss over the real vocabulary's labels (-100 ignored; its mask is the labels').
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    hf = ForCausalLMLoss(torch.nn.functional.linear(h, w).reshape(-1, PADDED), None, PADDED,
                         shift_labels=target.reshape(-1))
    hf.backward()
    ours_hf = _grads(lambda h_, w_: linear_cross_entropy(h_, w_, target, chunk), hidden, weight,
                     valid.float())
    assert abs(_masked_mean(ours_hf[0], valid.float()).item() - hf.item()) <= TOL * hf.item()
    assert rel_err(ours_hf[1], h.grad.double()) <= TOL and rel_err(ours_hf[2], w.grad.double()) <= TOL


def test_the_comparison_has_teeth():
    """A loss mask ignored in backward, or targets one position off, move the compared values by far more
    than the tolerance."""
    hidden, weight, target, mask = linear_inputs()
    want_loss, want_gh, _ = _megatron(hidden, weight, target, mask)
    _, unmasked_gh, _ = _megatron(hidden, weight, target, (target >= 0).float())
    shifted_loss, _, _ = _megatron(hidden, weight, torch.roll(target, 1, 0), mask)
    assert rel_err(unmasked_gh, want_gh.double()) > 100 * TOL
    valid = (target >= 0) & (torch.roll(target, 1, 0) >= 0)
    assert rel_err(shifted_loss[valid], want_loss[valid].double()) > 100 * TOL


def test_frozen_weight_keeps_no_vocabulary_sized_tensor():
    """With a frozen output weight (LoRA) backward needs only the [tokens, hidden] gradient: nothing of
    [tokens, vocabulary] is saved for backward, and the weight gets no gradient."""
    hidden, weight, target, mask = linear_inputs()
    saved = []
    h = hidden.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        loss = linear_cross_entropy(h, weight, target, 5)
    _masked_mean(loss, mask).backward()
    assert saved and all(PADDED not in shape for shape in saved), saved
    want = _megatron(hidden, weight, target, mask)[1]
    assert rel_err(h.grad, want.double()) <= TOL


def test_refuses_an_empty_block():
    hidden, weight, target, _ = linear_inputs()
    with pytest.raises(ValueError, match="--loss-chunk-size"):
        linear_cross_entropy(hidden, weight, target, 0)


# ---- the model-level patch ------------------------------------------------------------------------------
def _tiny_model(tied: bool, lora: bool):
    from mindspeed_llm.lora import LoraConfig, apply_lora
    from mindspeed_llm.models import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig
    from tests.helpers.tiny import tiny_hf_config

    cfg = ModelConfig.from_hf_config(tiny_hf_config("qwen2", vocab_size=VOCAB, num_layers=2,
                                                    tie_word_embeddings=tied))
    torch.manual_seed(3)
    model = build_gpt_model(cfg.replace(params_dtype=torch.float32), padded_vocab_size=PADDED,
                            pre_process=True, post_process=True)
    if lora:
        apply_lora(model, LoraConfig(r=4, alpha=8.0, target_modules=("linear_qkv", "linear_fc2")))
        with torch.no_grad():  # a trained-looking B: the adapters change the loss
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model


def _model_loss_and_grads(model, ids, labels, mask):
    model.zero_grad(set_to_none=True)
    loss = model(ids, torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids), None, labels=labels)
    _masked_mean(loss.float(), mask).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied,lora", [(False, False), (True, True)])
def test_patch_equals_megatrons_postprocess(tied, lora):
    """GPTModel with --loss-compute-mode chunk: the per-token loss and every gradient equal megatron's
    output layer + loss (trained untied output layer; tied, frozen output layer under LoRA); without labels
    the patch returns megatron's logits."""
    from mindspeed_llm.patches.features import disable_feature_patches, enable_feature_patches

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 11), generator=gen)
    labels = torch.roll(ids, -1, 1)
    mask = torch.ones(2, 11)
    mask[1, 7:] = 0.0
    with single_process_model_parallel():
        model = _tiny_model(tied, lora)
        want_loss, want = _model_loss_and_grads(model, ids, labels, mask)
        try:
            assert enable_feature_patches(loss_chunk_size=5) == ["megatron.core.models.gpt.gpt_model."
                                                                  "GPTModel._postprocess"]
            loss, got = _model_loss_and_grads(model, ids, labels, mask)
            with torch.no_grad():
                logits = model(ids, torch.arange(11).unsqueeze(0).expand_as(ids), None)
        finally:
            disable_feature_patches()
        with torch.no_grad():
            want_logits = model(ids, torch.arange(11).unsqueeze(0).expand_as(ids), None)
    assert loss.shape == want_loss.shape == (2, 11)
    assert rel_err(loss, want_loss.double()) <= TOL
    assert sorted(got) == sorted(want) and got
    for name in want:
        assert rel_err(got[name], want[name].double()) <= TOL, name
    if lora:
        assert all("lora_" in name for name in got)
    else:
        assert "output_layer.weight" in got
    assert torch.equal(logits, want_logits)
