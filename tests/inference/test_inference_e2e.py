"""inference.py under torchrun against transformers' ``generate`` on the same weights (fp32, CPU, gloo).

One tiny random Qwen2.5 (transformers makes it), converted by convert_ckpt.py's library function to
TP1, TP2 and PP2. Greedy: a batch of prompts of different lengths, 32 new tokens, must equal
transformers' greedy ``generate`` of each prompt token for token (the word-level tokenizer maps each
token to its own word, so the printed text is the token sequence). Sampling with a seed: the TP1
and TP2 runs (two launches) print the same tokens. A launch runs ``--task greedy do_sample`` (both
tasks on one model load, as MindSpeed-LLM's inference.py does). Chat: a converted model whose weights make it
answer ``w10 w11 w12 <|im_end|> w13 ...`` after the qwen template's assistant header stops at
``<|im_end|>`` and answers each scripted turn (transformers on the hand-written ChatML text says the same).
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e.pretrain_helpers import model_flags
from tests.helpers.tiny import (
    convert_hf_to_mg,
    load_hf_model,
    make_tiny_hf_model,
    save_word_tokenizer,
    tiny_checkpoints,
)
from tests.inference.helpers import IM_END, IM_START, hf_continuation, run_inference, run_tasks

pytestmark = pytest.mark.slow

PROMPTS = ["w5 w6 w7", "w9 w10 w11 w12 w13 w14 w15 w16 w17", "w40"]
NEW_TOKENS = 32
SAMPLING = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "7"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The HF model, its tokenizer folder and its TP1 / TP2 / PP2 conversions."""
    root = tmp_path_factory.mktemp("inference")
    hf, ckpts = tiny_checkpoints(root, {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}, num_layers=2)
    save_word_tokenizer(root / "tok", 120)
    return {"model": load_hf_model(str(hf)), "hf": hf, "tok": root / "tok", "ckpts": ckpts}


_LAYOUT = {"tp1": ([], 1), "tp2": (["--tensor-model-parallel-size", "2"], 2),
           "pp2": (["--pipeline-model-parallel-size", "2"], 2)}


_TASKS = {"tp1": ["greedy", "do_sample"], "tp2": ["greedy", "do_sample"], "pp2": ["greedy"]}


@pytest.fixture(scope="module")
def launches(tiny) -> dict:
    """layout -> task -> printed (prompt, continuation) pairs; one launch per layout."""
    found = {}
    for layout, (parallel, nproc) in _LAYOUT.items():
        flags = [
            *model_flags(tiny["hf"]),
            *parallel,
            "--load",
            tiny["ckpts"][layout],
            "--tokenizer-name-or-path",
            tiny["tok"],
            "--max-new-tokens",
            NEW_TOKENS,
            *[a for p in PROMPTS for a in ("--prompt", p)],
            *(SAMPLING if "do_sample" in _TASKS[layout] else []),
        ]
        found[layout] = run_tasks(flags, _TASKS[layout], nproc=nproc)
    return found


@pytest.fixture(scope="module")
def greedy_reference(tiny) -> list[str]:
    """transformers' greedy continuation of each prompt (stopping at EOS, as inference.py does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["tok"]))
    return [tok.decode(hf_continuation(tiny["model"], tok, tok(p).input_ids, NEW_TOKENS, tok.eos_token_id),
                       skip_special_tokens=True) for p in PROMPTS]


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_greedy_batch_equals_transformers_generate(launches, greedy_reference, layout) -> None:
    outputs = launches[layout]["greedy"]
    assert [p for p, _ in outputs] == PROMPTS
    assert [len(text.split()) for text in greedy_reference] == [NEW_TOKENS] * len(PROMPTS)  # no early EOS
    assert [text for _, text in outputs] == greedy_reference


def test_sampling_with_a_seed_is_reproducible_across_runs_and_tp(launches, greedy_reference) -> None:
    sampled = {layout: [text for _, text in launches[layout]["do_sample"]] for layout in ("tp1", "tp2")}
    assert sampled["tp1"] == sampled["tp2"]  # two launches, two layouts, one seed
    assert sampled["tp1"] != greedy_reference  # it does sample
    assert all(len(text.split()) > 0 for text in sampled["tp1"])


# ---- chat --------------------------------------------------------------------------------------------------
CHAIN = {
    0: 10,
    10: 11,
    11: 12,
    12: 119,
    119: 13,
    13: 14,
}  # <unk> ("assistant") -> w10 w11 w12 <|im_end|> w13 ..
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _force_chain(model, chain: dict[int, int]) -> None:
    """Layers add nothing (o_proj, down_proj zero), so the next token depends on the last one: set lm_head so
    that token a is followed by chain[a]."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        final = model.model.norm(model.model.embed_tokens.weight)  # the last hidden state of each token
        model.lm_head.weight.normal_(0, 0.01)
        for prev, nxt in chain.items():
            model.lm_head.weight[nxt] = 10 * final[prev] / final[prev].norm() ** 2


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chat")
    model = make_tiny_hf_model(str(root / "hf0"), "qwen2", num_layers=2)
    _force_chain(model, CHAIN)
    model.save_pretrained(str(root / "hf"), safe_serialization=True)
    save_word_tokenizer(root / "tok", 118, specials=(IM_START, IM_END))
    return {
        "model": model,
        "hf": root / "hf",
        "tok": root / "tok",
        "mg": convert_hf_to_mg(root / "hf", root / "mg"),
    }


def test_chat_qwen_template_stops_at_im_end(chat_model) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_model["tok"]))
    assert tok.convert_tokens_to_ids(IM_END) == 119 and tok.convert_tokens_to_ids(IM_START) == 118
    turns = ["w5 w6", "w7"]
    flags = [*model_flags(chat_model["hf"]), "--load", chat_model["mg"], "--tokenizer-name-or-path",
             chat_model["tok"], "--max-new-tokens", 16, "--task", "chat", "--prompt-type", "qwen",
             *[a for t in turns for a in ("--prompt", t)]]
    outputs = run_inference(flags)

    # The reference: Qwen2.5-Instruct's ChatML written out by hand, transformers' generate stopping at
    # <|im_end|>.
    text = f"{IM_START}system\n{QWEN_SYSTEM}{IM_END}\n"
    answers = []
    for turn in turns:
        text += f"{IM_START}user\n{turn}{IM_END}\n{IM_START}assistant\n"
        new = hf_continuation(
            chat_model["model"], tok, tok(text, add_special_tokens=False).input_ids, 16, 119
        )
        assert new[-1] == 119 and len(new) < 16  # the model ends its turn by itself
        answers.append(tok.decode(new, skip_special_tokens=True))
        text += f"{answers[-1]}{IM_END}\n"
    assert outputs == list(zip(turns, answers))
    assert answers[0] == "w10 w11 w12"  # and not w13 w14 ..., which follow <|im_end|>

