"""evaluation.py with ``--lora-load`` and ``--prompt-type``: an instruction-tuned LoRA checkpoint's MMLU
scores equal transformers + peft on the same questions in the same chat template (fp32, relative 1e-5).

A tiny random Qwen2.5 and a random peft adapter on every linear layer (peft makes it); the base converted to
Megatron, the adapter imported by convert_ckpt.py (hf -> mg with ``--lora-load``). One TP2 launch
evaluates ``--load BASE --lora-load ADAPTER --task mmlu --prompt-type qwen``: each question's 5-shot prompt
becomes the user turn of Qwen's ChatML, written out here by hand (its default system turn, the assistant
header last), and the letters " A" .. " D" are scored after it. Teeth: peft's model with the adapter off, and
the same adapter on the prompt without the chat turns, each move the log-likelihoods by far more than the
tolerance.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.pretrain_helpers import model_flags
from tests.evaluation.fixtures import OFFLINE_ENV, PROMPT_WORDS, write_mmlu
from tests.evaluation.test_evaluation_e2e import _hf_loglikelihood, _mmlu_prompt
from tests.helpers.launch import torchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import convert_hf_to_mg, make_hf_model
from tests.models.lora_helpers import load_peft_model, make_peft_adapter

pytestmark = pytest.mark.slow

EVALUATION = REPO_ROOT / "evaluation.py"
REL = 1e-5
SUBJECTS = {"anatomy": 3}
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "--lora-r", "4",
        "--lora-alpha", "8"]
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # Qwen2.5's, by hand
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _chatml(prompt: str) -> str:
    return (f"{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n{prompt}{IM_END}\n"
            f"{IM_START}assistant\n")


def _save_chat_tokenizer(folder) -> None:
    """A word-level tokenizer within the tiny model's 128 ids: w3 .. w117, MMLU's prompt words, then ChatML's
    two special tokens (other words, "system" and "user" among them, are ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 118)}}
    vocab.update({word: 118 + i for i, word in enumerate(PROMPT_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=[IM_START, IM_END])
    assert len(fast) <= 128
    fast.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from mindspeed_llm.convert.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("evaluation_lora_chat")
    hf = make_hf_model(root / "hf", num_layers=2)
    make_peft_adapter(str(hf), str(root / "peft"))
    base = convert_hf_to_mg(hf, root / "base", tp=2)
    adapter = convert(ConvertOptions("hf", "mg", str(hf), str(root / "adapter"), target_tp=2,
                                     add_qkv_bias=True, lora_load=str(root / "peft"), progress=False))
    _save_chat_tokenizer(root / "tok")
    mmlu = write_mmlu(root / "mmlu", SUBJECTS)
    out = root / "out"
    torchrun(EVALUATION, *model_flags(hf), "--tensor-model-parallel-size", "2", "--load", base,
             "--lora-load", adapter, *LORA, "--tokenizer-name-or-path", root / "tok", "--task", "mmlu",
             "--task-data-path", mmlu, "--prompt-type", "qwen", "--output-path", out, nproc=2, timeout=400,
             env=OFFLINE_ENV)
    questions = json.loads((out / "evaluation_results.json").read_text())["tasks"]["mmlu"]["questions"]
    return {"root": root, "hf": hf, "mmlu": mmlu, "questions": sorted(questions, key=lambda q: q["index"])}


def _reference(setup, model, *, chat: bool = True) -> list[list[float]]:
    """``model``'s log-likelihood of each letter after each question."""
    import csv

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(setup["root"] / "tok"))
    found = []
    for subject in SUBJECTS:
        dev, test = (list(csv.reader(open(setup["mmlu"] / s / f"{subject}_{s}.csv", encoding="utf-8")))
                     for s in ("dev", "test"))
        for row in test:
            prompt = _mmlu_prompt(subject, dev[:5], row)
            prompt = _chatml(prompt) if chat else prompt
            context = tok(prompt).input_ids
            found.append([_hf_loglikelihood(model, context, tok(prompt + f" {x}").input_ids[len(context):])
                          for x in "ABCD"])
    return found


def _worst(got: list[list[float]], want: list[list[float]]) -> float:
    return max(abs(a - b) / abs(b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))


def test_lora_checkpoint_in_a_chat_template_scores_as_peft(setup) -> None:
    ours = [q["loglikelihoods"] for q in setup["questions"]]
    peft = load_peft_model(str(setup["hf"]), str(setup["root"] / "peft")).eval()
    reference = _reference(setup, peft)
    assert len(ours) == sum(SUBJECTS.values())
    assert _worst(ours, reference) <= REL, (ours, reference)
    for question, lls in zip(setup["questions"], reference):
        assert question["prediction"] == max(range(4), key=lls.__getitem__)
    # Teeth: the adapter off, or the question without its chat turns, moves every comparison.
    with peft.disable_adapter():
        assert _worst(ours, _reference(setup, peft)) > 100 * REL
    assert _worst(ours, _reference(setup, peft, chat=False)) > 100 * REL
