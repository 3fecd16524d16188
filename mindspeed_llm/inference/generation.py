"""Token generation over megatron-core's ``GPTInferenceWrapper`` and ``StaticInferenceContext`` (the KV
cache).

megatron-core runs the forward passes: the wrapper passes activations between pipeline stages and
gathers the tensor-parallel logits; the static inference context holds every layer's keys and
values, so a decode step computes one position. The loop around them is ours, because megatron's
static ``TextGenerationController`` stops only at the tokenizer's single EOD id and streams
through its own request objects: here a sequence stops at any of a set of ids (EOS and a chat
template's end-of-turn token), each new token is handed to a callback as it is chosen (streaming),
and sampling follows transformers' semantics (temperature, then top-k, then top-p).

The batch follows megatron's static scheme: prompts are right-padded, the prefill runs up to the
shortest prompt, and every later step computes one position for all sequences; a sequence whose
prompt is longer takes its own prompt token there instead of the sampled one. Every rank runs the
same loop; the last pipeline stage chooses the tokens and broadcasts them to the other stages.

LongRoPE (Phi-3) follows transformers' ``generate``: each step's frequencies are the short factors while
the text fits the original window and the long ones once it is longer, and at the step that crosses the
window the cache is dropped and the whole text computed again with the long factors (Phi-3's
``prepare_inputs_for_generation``), so earlier keys are not left rotated by the short ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Greedy decoding, or sampling at ``temperature`` within ``top_k`` tokens and ``top_p`` mass."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1234


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Scores to sample from: divided by ``temperature``, then all but the top-k / top-p tokens at -inf."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = mass_below <= 1.0 - top_p
        drop[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` [batch, vocab]: argmax, or a draw from the filtered distribution."""
    logits = logits.float()
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@contextlib.contextmanager
def _output_layer_from(model: torch.nn.Module, first: int):
    """While inside: ``model``'s output layer projects the hidden states of positions ``first`` .. only
    (megatron's hidden states are [seq, batch, hidden]); a stage without the output layer is unchanged."""
    layer = getattr(model, "output_layer", None) if getattr(model, "post_process", False) else None
    if not first or layer is None:
        yield
        return
    original = layer.forward
    layer.forward = lambda hidden_states, *args, **kwargs: original(hidden_states[first:], *args, **kwargs)
    try:
        yield
    finally:
        del layer.forward  # the class's forward again


class Generator:
    """Generates continuations of token-id prompts with one rank's model chunk (any TP/PP)."""

    def __init__(
        self, model: torch.nn.Module, *, vocab_size: int, pad_id: int, use_kv_cache: bool = True
    ) -> None:
        """Takes ``model`` for inference: its linear weights are stored transposed for decoding (same
        values)."""
        from megatron.core.utils import get_model_config

        from mindspeed_llm.models.rope_scaling import longrope_embeddings
        from mindspeed_llm.patches.inference import lay_out_weights_for_decode

        lay_out_weights_for_decode(model)
        self.model = model
        self.longrope = longrope_embeddings(model)
        self.config = get_model_config(model)
        self.vocab_size = vocab_size  # the real embedding rows: padded rows are never chosen
        self.pad_id = pad_id
        self.use_kv_cache = use_kv_cache

    def _wrapper(self, batch_size: int, max_length: int):
        """megatron's GPT inference wrapper with a static KV cache sized for this batch."""
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import (
            GPTInferenceWrapper,
        )
        from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import (
            InferenceWrapperConfig,
        )

        config = InferenceWrapperConfig(
            hidden_size=self.config.hidden_size, params_dtype=self.config.params_dtype,
            inference_batch_times_seqlen_threshold=-1,  # never split a batch into micro-batches
            padded_vocab_size=self.model.vocab_size, inference_max_requests=batch_size,
            inference_max_seq_length=max_length,
        )
        context = StaticInferenceContext(batch_size, max_length)
        return GPTInferenceWrapper(self.model, config, context), context

    @torch.inference_mode()
    def forward_logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor | None:
        """Logits [batch, seq - first, vocab] (the real vocabulary) of positions ``first`` .. of ``tokens``
        [batch, seq], one causal forward without a cache: on the last pipeline stage; None on the others.
        Every rank calls it. The output layer projects only those positions (a log-likelihood request needs
        its continuation's rows, not the context's)."""
        from megatron.core import parallel_state as ps

        batch, length = tokens.shape
        wrapper, context = self._wrapper(batch, length)
        context.materialize_only_last_token_logits = False  # every position's logits, not the last one's
        wrapper.prep_model_for_inference()
        inputs = wrapper.prep_inference_input(tokens.to(torch.cuda.current_device()))
        with _output_layer_from(self.model, first):
            logits = wrapper.run_one_forward_step(wrapper.get_batch_for_context_window(inputs, 0, length))
        return logits[..., : self.vocab_size] if ps.is_pipeline_last_stage(ignore_virtual=True) else None

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, sampling: SamplingParams,
                 stop_ids: set[int] = frozenset(), max_length: int | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """New tokens of each prompt: up to ``max_new_tokens``, ending with the first of ``stop_ids`` if any.

        ``on_token(row, token)`` is called for each new token as soon as it is chosen.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        batch = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])
        total = int(lengths.max()) + max_new_tokens
        if max_length is not None and total > max_length:
            raise ValueError(f"the longest prompt ({int(lengths.max())} tokens) plus --max-new-tokens "
                             f"{max_new_tokens} exceeds the model's {max_length} positions")
        tokens = torch.full((batch, total), self.pad_id, dtype=torch.long, device=torch.cuda.current_device())
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
        ends = lengths + max_new_tokens
        wrapper, context = self._wrapper(batch, total)
        wrapper.prep_model_for_inference()
        inputs = wrapper.prep_inference_input(tokens)
        try:
            return self._loop(wrapper, context, inputs, tokens, lengths, ends, total, sampling, stop_ids,
                              on_token)
        finally:
            for emb in self.longrope:
                emb.sequence_length = None

    def _loop(self, wrapper, context, inputs, tokens, lengths, ends, total, sampling, stop_ids, on_token):
        from megatron.core import parallel_state as ps
        from megatron.core.inference.communication_utils import broadcast_from_last_pipeline_stage

        batch = tokens.size(0)
        last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        pipelined = ps.get_pipeline_model_parallel_world_size() > 1
        rng = torch.Generator(device=tokens.device).manual_seed(sampling.seed)
        done = torch.zeros(batch, dtype=torch.bool)
        new_tokens: list[list[int]] = [[] for _ in range(batch)]
        window_end = min((emb.original_max_position_embeddings for emb in self.longrope), default=None)

        start = 0
        for end in range(int(lengths.min()), total):
            crosses = window_end is not None and 0 < start <= window_end < end
            if not self.use_kv_cache or crosses:
                context.reset()  # forget every cached position: the whole sequence is computed again
                start = 0
            for emb in self.longrope:
                emb.sequence_length = end  # the text's length decides LongRoPE's factors, as in transformers
            window = wrapper.get_batch_for_context_window(inputs, start, end)
            if start > 0:  # a decode step: its rows see every cached position, a mask of nothing masked
                window["attention_mask"] = None
            logits = wrapper.run_one_forward_step(window)
            chosen = (choose_tokens(logits[:, -1, : self.vocab_size], sampling, rng) if last_stage
                      else None)
            if pipelined:
                chosen = broadcast_from_last_pipeline_stage([batch], torch.long, chosen)
            chosen = chosen.cpu()
            generating = (lengths <= end) & (end < ends) & ~done
            for row in torch.nonzero(generating).flatten().tolist():
                token = int(chosen[row])
                tokens[row, end] = token
                new_tokens[row].append(token)
                if token in stop_ids:
                    done[row] = True
                if on_token is not None:
                    on_token(row, token)
            start = end
            if bool((done | (ends <= end + 1)).all()):
                break
        return new_tokens
