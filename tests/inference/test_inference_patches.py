"""The inference patch group in one process: the static KV cache holds rotated keys (transformers' cache is
the reference), greedy tokens equal transformers' ``generate``, and training's forward/backward is
untouched."""

from __future__ import annotations

import json

import pytest
import torch

# megatron's modules imported before patching, so the registry sees (and restores) their copies.
from megatron.core.tensor_parallel import layers, mappings  # noqa: F401
from megatron.core.transformer import attention  # noqa: F401

from mindspeed_llm.patches.inference import GROUP, enable_inference_patches
from mindspeed_llm.patches.registry import PatchRegistry
from tests.ops.megatron_env import single_process_model_parallel

PROMPT_LEN, NEW_TOKENS = 24, 6


def _converted(root, kind: str = "qwen2", num_layers: int = 2):
    """(transformers' model, megatron's GPTModel, ModelConfig) with the same random weights (a converted tiny
    model); call within ``single_process_model_parallel``."""
    from mindspeed_llm.models.builder import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig
    from mindspeed_llm.runtime.checkpoint import layout
    from tests.checkpoint.tiny_models import make_tiny_hf_model
    from tests.e2e.pretrain_helpers import convert_hf_to_mg

    hf = make_tiny_hf_model(str(root / "hf"), kind, num_layers=num_layers)
    mg_dir = convert_hf_to_mg(root / "hf", root / "mg")
    model_config = ModelConfig.from_hf_config(json.loads((root / "hf" / "config.json").read_text()))
    mg = build_gpt_model(model_config, padded_vocab_size=hf.config.vocab_size, pre_process=True,
                         post_process=True, hidden_dropout=0.0, attention_dropout=0.0)
    state = layout.load_rank_file(
        layout.checkpoint_file_for(str(mg_dir), layout.read_tracker(str(mg_dir)), 0, 0, 1)
    )
    mg.load_state_dict(state["model"], strict=True)
    return hf, mg.eval(), model_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers' model, megatron's GPTModel) with the same random weights (a converted tiny Qwen2.5)."""
    with single_process_model_parallel():
        yield _converted(tmp_path_factory.mktemp("patched"))


@pytest.fixture
def patched():
    """The inference group applied on a registry of its own, reverted after the test."""
    registry = PatchRegistry()
    enable_inference_patches(registry, "cpu")
    yield registry
    registry.revert(GROUP)


def _prompts(vocab: int) -> list[list[int]]:
    torch.manual_seed(3)
    return torch.randint(3, vocab, (2, PROMPT_LEN)).tolist()


def test_static_cache_holds_rotated_keys_and_greedy_equals_transformers(models, patched) -> None:
    from mindspeed_llm.inference.generation import Generator, SamplingParams

    hf, mg, model_config = models
    prompts = _prompts(model_config.vocab_size)
    generator = Generator(mg, vocab_size=model_config.vocab_size, pad_id=0)
    contexts = []
    wrapper = generator._wrapper
    generator._wrapper = lambda *a: contexts.append(wrapper(*a)) or contexts[-1]  # keep the context to read
    ours = generator.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams())

    ids = torch.tensor(prompts)
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
            return_dict_in_generate=True,
        )
    assert ours == out.sequences[:, PROMPT_LEN:].tolist()

    # transformers' cache holds keys after RoPE, [batch, groups, positions, head dim]; megatron's static cache
    # is [positions, batch, groups * head dim]-shaped per layer. The last chosen token is never fed back.
    cached = PROMPT_LEN + NEW_TOKENS - 1
    context = contexts[0][1]
    for layer in range(hf.config.num_hidden_layers):
        ref = out.past_key_values.layers[layer].keys[:, :, :cached]
        keys = context.key_value_memory_dict[layer + 1][0][:cached]
        torch.testing.assert_close(
            keys.reshape(cached, len(prompts), *ref.shape[1:2], -1).permute(1, 2, 0, 3),
            ref,
            rtol=1e-4,
            atol=1e-5,
        )


def test_training_forward_and_backward_untouched(models, patched) -> None:
    """With gradients on (training), the patched functions are megatron's: same loss, same gradients."""
    _, mg, model_config = models
    for p in mg.parameters():  # training's layout: only the generator re-lays the weights for decoding
        p.data = p.data.contiguous()
    tokens = torch.tensor(_prompts(model_config.vocab_size))
    positions = torch.arange(PROMPT_LEN).expand_as(tokens)

    def loss_and_grads():
        mg.train()
        mg.zero_grad(set_to_none=True)
        loss = mg(tokens, positions, None, labels=tokens).float().mean()
        loss.backward()
        mg.eval()
        return loss.detach(), {n: p.grad.clone() for n, p in mg.named_parameters()}

    loss, grads = loss_and_grads()
    patched.revert(GROUP)
    ref_loss, ref_grads = loss_and_grads()
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and all(torch.equal(grads[n], ref_grads[n]) for n in grads)


def _hf_greedy(hf, prompts: list[list[int]]):
    """transformers' greedy ``generate`` of NEW_TOKENS: the output with each step's logits."""
    ids = torch.tensor(prompts)
    with torch.no_grad():
        return hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )


def test_decode_layout_keeps_values_and_logits(models, patched) -> None:
    """The generator stores the linear weights transposed; each step's logits are those of megatron's own
    layout and transformers'."""
    from mindspeed_llm.inference.generation import Generator, SamplingParams

    hf, mg, model_config = models
    for p in mg.parameters():  # megatron's layout, whatever an earlier test left
        p.data = p.data.contiguous()
    generator = Generator(mg, vocab_size=model_config.vocab_size, pad_id=0)
    linears = [mg.output_layer.weight] + [
        w
        for layer in mg.decoder.layers
        for w in (
            layer.self_attention.linear_qkv.weight,
            layer.self_attention.linear_proj.weight,
            layer.mlp.linear_fc1.weight,
            layer.mlp.linear_fc2.weight,
        )
    ]
    assert all(w.t().is_contiguous() and not w.is_contiguous() for w in linears)
    assert torch.equal(mg.output_layer.weight, hf.lm_head.weight)  # the same values, the same shape
    assert torch.equal(
        mg.decoder.layers[1].self_attention.linear_proj.weight, hf.model.layers[1].self_attn.o_proj.weight
    )

    captured: list[torch.Tensor] = []
    hook = mg.output_layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0][-1].clone()))
    prompts = _prompts(model_config.vocab_size)
    try:
        ours = generator.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams())
        relaid, captured[:] = list(captured), []
        for p in mg.parameters():
            p.data = p.data.contiguous()
        plain_tokens = generator.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams())
    finally:
        hook.remove()
    out = _hf_greedy(hf, prompts)
    assert ours == plain_tokens == out.sequences[:, PROMPT_LEN:].tolist()
    assert len(relaid) == len(captured) == NEW_TOKENS
    for step, (a, b, ref) in enumerate(zip(relaid, captured, out.logits)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}: layouts differ")
        torch.testing.assert_close(a[:, : model_config.vocab_size], ref, rtol=1e-4, atol=1e-4,
                                   msg=f"step {step}: transformers' logits differ")


def test_decode_layout_of_tied_embeddings_greedy_equals_transformers(tmp_path, patched) -> None:
    """With the output layer sharing the embedding weight, that one weight is re-laid (lookups read it
    too)."""
    from mindspeed_llm.inference.generation import Generator, SamplingParams
    from mindspeed_llm.patches.inference import lay_out_weights_for_decode

    with single_process_model_parallel():
        hf, mg, model_config = _converted(tmp_path, "qwen3_tied", num_layers=1)
        assert mg.share_embeddings_and_output_weights and mg.output_layer.weight is None
        generator = Generator(mg, vocab_size=model_config.vocab_size, pad_id=0)
        assert mg.embedding.word_embeddings.weight.t().is_contiguous()
        assert lay_out_weights_for_decode(mg) == 0  # laid out once: nothing left to do
        prompts = _prompts(model_config.vocab_size)
        ours = generator.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams())
    assert ours == _hf_greedy(hf, prompts).sequences[:, PROMPT_LEN:].tolist()


@pytest.mark.parametrize("core_attention", ["megatron", "flash"])
def test_cache_over_prompts_of_different_lengths_filled_to_its_end(models, patched, core_attention) -> None:
    """Prompts of different lengths (the longer ones take their own tokens through one-position steps) with
    the generation ending at the cache's last position (``max_length``): each row's tokens equal
    transformers' greedy ``generate`` of that prompt alone, and each row's cached keys and values equal
    transformers' cache, position by position. The cache is laid out [batch, groups, positions, head dim]
    in memory. Run with megatron's core attention and with ``--use-flash-attn``'s (SDPA)."""
    from mindspeed_llm.inference.generation import Generator, SamplingParams
    from mindspeed_llm.ops.attention import FlashDotProductAttention

    hf, mg, model_config = models
    lengths, new = (3, 13, 8), 5
    total = max(lengths) + new
    torch.manual_seed(5)
    prompts = [torch.randint(3, model_config.vocab_size, (n,)).tolist() for n in lengths]
    originals = [layer.self_attention.core_attention for layer in mg.decoder.layers]
    if core_attention == "flash":
        for layer, ca in zip(mg.decoder.layers, originals):
            layer.self_attention.core_attention = FlashDotProductAttention(
                ca.config, ca.layer_number, ca.attn_mask_type, ca.attention_type)
    generator = Generator(mg, vocab_size=model_config.vocab_size, pad_id=0)
    contexts = []
    wrapper = generator._wrapper
    generator._wrapper = lambda *a: contexts.append(wrapper(*a)) or contexts[-1]
    try:
        ours = generator.generate(prompts, max_new_tokens=new, sampling=SamplingParams(), max_length=total)
        with pytest.raises(ValueError, match="exceeds the model's"):
            generator.generate(prompts, max_new_tokens=new, sampling=SamplingParams(), max_length=total - 1)
    finally:
        for layer, ca in zip(mg.decoder.layers, originals):
            layer.self_attention.core_attention = ca
    memory = contexts[0][1].key_value_memory_dict
    assert sorted(memory) == list(range(1, hf.config.num_hidden_layers + 1))
    for keys, values in memory.values():
        assert keys.shape[:2] == values.shape[:2] == (total, len(prompts))
        assert keys.permute(1, 2, 0, 3).is_contiguous() and values.permute(1, 2, 0, 3).is_contiguous()

    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                              min_new_tokens=new, eos_token_id=None, pad_token_id=0,
                              return_dict_in_generate=True)
        assert ours[row] == out.sequences[0, len(prompt):].tolist(), f"row {row}"
        cached = len(prompt) + new - 1  # the last chosen token is never fed back
        for layer in range(hf.config.num_hidden_layers):
            ref = out.past_key_values.layers[layer]
            for got, want in zip(memory[layer + 1], (ref.keys[0, :, :cached], ref.values[0, :, :cached])):
                got = got[:cached, row].permute(1, 0, 2)  # [groups, positions, head dim]
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                # teeth: the same cache read one position off is far outside the tolerance
                assert (got[:, 1:] - want[:, :-1]).abs().max() > 1e-2
