"""Sampling filters against transformers' own logits processors (temperature, top-k, top-p), and the draw."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.inference.generation import SamplingParams, choose_tokens, filter_logits


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.8),
                                                     (0.6, 20, 0.9), (1.3, 1, 0.5)])
def test_filters_equal_transformers_processors(temperature, top_k, top_p) -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    expected = logits.clone()
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(None, expected)
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p is not None:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


def test_greedy_is_argmax_and_sampling_follows_the_seed() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 40)
    assert torch.equal(choose_tokens(logits, SamplingParams(), torch.Generator()), logits.argmax(-1))
    params = SamplingParams(greedy=False, temperature=0.9, top_k=10)
    draws = [choose_tokens(logits, params, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    allowed = torch.topk(logits, 10, dim=-1).indices
    assert all(int(t) in allowed[row].tolist() for row, t in enumerate(draws[0]))
