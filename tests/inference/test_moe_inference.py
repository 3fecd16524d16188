"""inference.py on a mixture-of-experts checkpoint at EP2 and TP2 x EP2 against transformers' ``generate``.

One tiny random Qwen3-MoE (transformers makes it: 4 experts, top-2 renormalised by ``norm_topk_prob``, q/k
norms), converted by convert_ckpt.py's library function to EP2 (sequential experts) and to TP2 x EP2 with
``--moe-grouped-gemm``. Two launches:

- EP2 (2 processes, the allgather dispatcher): ``--max-batch-size 2`` generates the first two prompts as one
  batch (different lengths: megatron's static scheme) and the third alone, so its decode steps route one token
  (most experts receive none);
- TP2 x EP2 (4 processes, the alltoall dispatcher, grouped experts): the three prompts as one batch; every TP
  rank routes the whole sequence (generation runs without sequence parallelism).

Greedy, 32 new tokens each: every continuation equals transformers' greedy ``generate(do_sample=False)``
token for token (the word-level tokenizer maps each token to its own word). Teeth: transformers' own
``generate`` with ``norm_topk_prob`` flipped (the router's renormalisation ignored), or with one expert's
output dropped, gives other tokens on these prompts.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e.test_moe_loss_parity import _hf_model, moe_model_flags
from tests.helpers.tiny import save_word_tokenizer
from tests.helpers.tiny_moe import make_moe_hf_model
from tests.inference.helpers import hf_continuation, run_inference

pytestmark = pytest.mark.slow

PROMPTS = ["w5 w6 w7", "w9 w10 w11 w12 w13 w14 w15 w16 w17", "w40"]
NEW_TOKENS = 32
# name: (TP, EP, processes, converter options, launch flags)
_LAYOUT = {
    "ep2": (1, 2, 2, {}, ["--max-batch-size", "2"]),
    "tp2ep2": (2, 2, 4, {"moe_grouped_gemm": True},
               ["--moe-token-dispatcher-type", "alltoall", "--moe-grouped-gemm"]),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from mindspeed_llm.convert.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("moe_inference")
    hf = make_moe_hf_model(root / "hf", "qwen3_moe", num_layers=2, norm_topk_prob=True)
    save_word_tokenizer(root / "tok", 128)  # a folder of its own (see save_word_tokenizer)
    ckpts = {name: convert(ConvertOptions("hf", "mg", str(hf), str(root / name), target_tp=tp, target_ep=ep,
                                          progress=False, **options))
             for name, (tp, ep, _, options, _) in _LAYOUT.items()}
    return {"hf": hf, "tok": root / "tok", "ckpts": ckpts}


@pytest.fixture(scope="module")
def launches(tiny) -> dict:
    """layout -> the printed (prompt, continuation) pairs; one launch per layout."""
    found = {}
    for name, (tp, ep, nproc, _, extra) in _LAYOUT.items():
        flags = [*moe_model_flags(tiny["hf"]), "--tensor-model-parallel-size", tp,
                 "--expert-model-parallel-size", ep, *extra, "--load", tiny["ckpts"][name],
                 "--tokenizer-name-or-path", tiny["tok"], "--max-new-tokens", NEW_TOKENS,
                 *[a for p in PROMPTS for a in ("--prompt", p)]]
        found[name] = run_inference(flags, nproc=nproc, timeout=300)
    return found


def _greedy(tiny, model) -> list[str]:
    """transformers' greedy continuation of each prompt (stopping at EOS, as inference.py does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    return [tok.decode(hf_continuation(model, tok, tok(p).input_ids, NEW_TOKENS, tok.eos_token_id),
                       skip_special_tokens=True) for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(tiny) -> list[str]:
    return _greedy(tiny, _hf_model(tiny["hf"]))


@pytest.mark.parametrize("layout", list(_LAYOUT))
def test_moe_greedy_equals_transformers_generate(launches, reference, layout) -> None:
    outputs = launches[layout]
    assert [p for p, _ in outputs] == PROMPTS
    assert [len(text.split()) for text in reference] == [NEW_TOKENS] * len(PROMPTS)  # no early EOS
    assert [text for _, text in outputs] == reference


def test_a_wrong_router_or_a_dropped_expert_changes_the_tokens(tiny, reference) -> None:
    """The comparison has teeth: transformers' own generation, with the top-k probabilities left
    unrenormalised or with expert 1's output zeroed in every layer, differs from the reference."""
    unnormalised = _greedy(tiny, _hf_model(tiny["hf"], norm_topk_prob=False))
    assert unnormalised != reference
    dropped = _hf_model(tiny["hf"])
    with torch.no_grad():
        for layer in dropped.model.layers:
            experts = layer.mlp.experts
            if hasattr(experts, "down_proj"):  # transformers 5's fused experts
                experts.down_proj[1].zero_()
            else:
                experts[1].down_proj.weight.zero_()
    assert _greedy(tiny, dropped) != reference
