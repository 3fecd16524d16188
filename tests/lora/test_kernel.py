"""The adapted linear as one autograd function (lora/kernel.py) against peft's LoRA layer, and inside a
GPTModel against the unfused adapter (the same model in eval mode, where the unfused path runs)."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.lora.kernel import lora_linear
from tests.helpers.numerics import rel_err
from tests.ops.megatron_env import single_process_model_parallel

TOL = 1e-6
R, ALPHA = 4, 6.0  # scaling 1.5: not a power of two, so the scaling's place in the arithmetic shows


def _peft_layer(bias: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(24, 40, bias=bias))
    model = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["proj"],
                                            init_lora_weights=False))
    return model.base_model.model.proj


@pytest.mark.parametrize("bias", [True, False])
def test_equals_peft_layer(bias):
    layer = _peft_layer(bias)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(5, 3, 24, generator=torch.Generator().manual_seed(1))
    g = torch.randn(5, 3, 40, generator=torch.Generator().manual_seed(2))
    xp = x.clone().requires_grad_()
    want = layer(xp)
    want_x, want_a, want_b = torch.autograd.grad(want, (xp, a, b), g)
    xo = x.clone().requires_grad_()
    ao, bo = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    weight = layer.base_layer.weight.detach()
    base_bias = None if layer.base_layer.bias is None else layer.base_layer.bias.detach()
    got = lora_linear(xo, weight, base_bias, ao, bo, ALPHA / R)
    got_x, got_a, got_b = torch.autograd.grad(got, (xo, ao, bo), g)
    for mine, peft in ((got, want), (got_x, want_x), (got_a, want_a), (got_b, want_b)):
        assert rel_err(mine, peft.detach().double()) <= TOL
    # teeth: the adapter without its scaling is far off
    unscaled = lora_linear(x, weight, base_bias, a.detach(), b.detach(), 1.0)
    assert rel_err(unscaled, want.detach().double()) > 100 * TOL


def test_refuses_a_trainable_base():
    with pytest.raises(ValueError, match="frozen"):
        lora_linear(torch.randn(2, 3), torch.randn(4, 3, requires_grad=True), None, torch.randn(1, 3),
                    torch.randn(4, 1), 1.0)


def _graph_names(fn) -> set[str]:
    names, todo, seen = set(), [fn], set()
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.add(type(f).__name__)
        todo.extend(n for n, _ in f.next_functions)
    return names


def test_gpt_model_fused_adapters_equal_unfused():
    """TP1 float32 training mode runs every adapted layer as the one function; its loss and adapter
    gradients equal the unfused layers' (eval mode, same weights)."""
    from mindspeed_llm.lora import LoraConfig, apply_lora
    from mindspeed_llm.models import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig
    from tests.helpers.tiny import tiny_hf_config

    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(9).unsqueeze(0).expand_as(ids)
    results = {}
    with single_process_model_parallel():
        cfg = ModelConfig.from_hf_config(tiny_hf_config("qwen2", num_layers=2)).replace(
            params_dtype=torch.float32)
        model = build_gpt_model(cfg, padded_vocab_size=128, pre_process=True, post_process=True)
        apply_lora(model, LoraConfig(r=R, alpha=ALPHA, target_modules=("linear_qkv", "linear_proj",
                                                                       "linear_fc1", "linear_fc2")))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        for mode in ("train", "eval"):
            getattr(model, mode)()
            model.zero_grad(set_to_none=True)
            loss = model(ids, pos, None, labels=torch.roll(ids, -1, 1)).mean()
            names = _graph_names(loss.grad_fn)
            loss.backward()
            results[mode] = (loss.item(), names,
                             {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_f, names_f, grads_f), (loss_u, names_u, grads_u) = results["train"], results["eval"]
    assert "_LoraLinearBackward" in names_f and "_LoraLinearBackward" not in names_u
    assert abs(loss_f - loss_u) <= 1e-5 * abs(loss_u)
    assert sorted(grads_f) == sorted(grads_u) and len(grads_u) == 2 * 4 * 2
    for name, want in grads_u.items():
        assert rel_err(grads_f[name], want.double()) <= 1e-5, name
