"""torch's fused Adam under megatron's optimizer, and the _foreach multi_tensor_scale: the same numbers as
megatron's own fallbacks (the per-parameter AdamW loop, ``dst.copy_(src * scale)``)."""

from __future__ import annotations

import pytest
import torch
from megatron.core import optimizer as megatron_optimizer
from megatron.core import utils as megatron_utils
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig
from megatron.core.transformer.transformer_config import TransformerConfig

from mindspeed_llm.ops.fused_adam import torch_optimizers, use_fused_adam
from mindspeed_llm.ops.multi_tensor import foreach_multi_tensor_scale
from tests.ops.megatron_env import single_process_model_parallel

VOCAB, SEQ, MBS = 64, 16, 2


def _ddp_gpt(
    distributed: bool, weights_from: DistributedDataParallel | None = None
) -> DistributedDataParallel:
    config = TransformerConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                               num_query_groups=2, normalization="RMSNorm", gated_linear_unit=True,
                               activation_func=torch.nn.functional.silu, add_bias_linear=False,
                               hidden_dropout=0.0, attention_dropout=0.0)
    model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                     vocab_size=VOCAB, max_sequence_length=SEQ, position_embedding_type="rope")
    if weights_from is not None:
        model.load_state_dict(weights_from.module.state_dict())
    return DistributedDataParallel(config=config, module=model,
                                   ddp_config=DistributedDataParallelConfig(use_distributed_optimizer=distributed))


def _train(model, optimizer, steps=3):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        data = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen)
        positions = torch.arange(SEQ).unsqueeze(0).expand(MBS, -1)
        model.zero_grad_buffer()
        optimizer.zero_grad()
        model(data[:, :-1], positions, None, labels=data[:, 1:]).mean().backward()
        model.finish_grad_sync()
        optimizer.step()


@pytest.mark.parametrize("distributed", [False, True])
def test_megatron_optimizer_runs_torch_fused_kernel_with_the_loops_numbers(distributed):
    config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, adam_beta2=0.95, clip_grad=1.0,
                             use_distributed_optimizer=distributed)
    with single_process_model_parallel():
        fused_model = _ddp_gpt(distributed)
        loop_model = _ddp_gpt(distributed, weights_from=fused_model)
        fused = megatron_optimizer.get_megatron_optimizer(config, [fused_model])  # the patched factory
        loop = megatron_optimizer.get_megatron_optimizer.__wrapped__(config, [loop_model])  # megatron's own
        inner = list(torch_optimizers(fused))
        assert inner and all(g["fused"] and not g["foreach"] for opt in inner for g in opt.param_groups)
        assert not any(g.get("fused") for opt in torch_optimizers(loop) for g in opt.param_groups)
        with torch.profiler.profile() as prof:
            _train(fused_model, fused)
        assert any("_fused_adamw_" in event.name for event in prof.events())
        _train(loop_model, loop)
    for (name, a), (_, b) in zip(fused_model.named_parameters(), loop_model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_loading_a_loop_optimizers_state_keeps_the_kernel_fused():
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    source = torch.optim.AdamW(params, lr=1e-3)
    params[0].grad = torch.randn(4, 4)
    source.step()
    target = torch.optim.AdamW(params, lr=1e-3)
    assert use_fused_adam(target) == 1
    target.load_state_dict(source.state_dict())  # its param groups say fused=None
    assert target.param_groups[0]["fused"] is True
    target.step()


def test_parameters_the_kernel_cannot_take_are_left_alone():
    ints = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1)
    assert use_fused_adam(ints) == 0  # not Adam
    meta = torch.optim.AdamW([torch.nn.Parameter(torch.randn(2, device="meta"))], lr=0.1)
    assert use_fused_adam(meta) == 0 and not meta.param_groups[0].get("fused")


def _megatron_scale(srcs, dsts, scale):
    for src, dst in zip(srcs, dsts):  # megatron.core.utils.local_multi_tensor_scale's body
        dst.copy_(src * scale)


def test_multi_tensor_scale_is_patched_into_megatron():
    assert megatron_utils.local_multi_tensor_scale is foreach_multi_tensor_scale
    from megatron.core.optimizer import clip_grads

    assert clip_grads.multi_tensor_scale_impl is foreach_multi_tensor_scale


@pytest.mark.parametrize("case", ["in_place", "copy_scale_1", "copy_scaled"])
def test_multi_tensor_scale_bit_identical(case):
    gen = torch.Generator().manual_seed(0)
    srcs = [torch.randn(shape, generator=gen) for shape in [(7, 3), (5,), (2, 4, 3)]]
    scale = 1.0 if case == "copy_scale_1" else 0.3719
    if case == "in_place":
        want = [s.clone() for s in srcs]
        _megatron_scale(want, want, scale)
        foreach_multi_tensor_scale(2048, None, [srcs, srcs], scale)
        got = srcs
    else:
        want = [torch.empty_like(s, dtype=torch.bfloat16) for s in srcs]
        got = [torch.empty_like(s, dtype=torch.bfloat16) for s in srcs]
        _megatron_scale(srcs, want, scale)
        foreach_multi_tensor_scale(2048, None, [srcs, got], scale)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
