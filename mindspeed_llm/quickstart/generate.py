"""The quick start's last step: what training did, seen from transformers.

The trained model (converted back to HF) and the untrained one it started from (the HF folder that
was converted to Megatron) are scored on held-out text, docstrings of standard-library modules that
are not in the training corpus, and the trained one writes a greedy continuation of a prompt.

    python -m mindspeed_llm.quickstart.generate --model-dir TRAINED_HF --untrained-dir ORIGINAL_HF
"""

from __future__ import annotations

import argparse
import math
import sys

DEFAULT_PROMPT = "### Instruction:\nExplain what `json.dumps` does in Python.\n\n### Response:\n"
EXPECT = (
    "What to expect: a model this small (4 layers, width 128) trained for a minute has mostly learned which "
    "tokens are frequent, so its greedy continuation is usually one common word or phrase repeated "
    "(' the the the ...'): that is what such a model does after so little training, not a fault. What "
    "training changed shows in the held-out loss above, which fell from chance level."
)


def load(model_dir: str):
    """(tokenizer, float32 model in eval mode) of an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return tokenizer, model.eval()


def mean_token_loss(model, tokenizer, texts: list[str], max_tokens: int = 128) -> tuple[float, int]:
    """(mean next-token cross entropy over all predicted tokens, their count); each text cut to
    ``max_tokens``."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
            n = ids.shape[1] - 1
            if n < 1:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * n  # transformers: mean over the n targets
            count += n
    return total / max(count, 1), count


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy-decode ``max_new_tokens`` after ``prompt``; returns the new text."""
    import torch

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=False)


def main(argv: list[str] | None = None) -> int:
    from mindspeed_llm.quickstart.assets import HELDOUT_MODULES, heldout_rows

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True, help="the trained model, as an HF folder")
    parser.add_argument("--untrained-dir", default=None,
                        help="the HF folder training started from, to compare the held-out loss with")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--seq-length", type=int, default=128, help="tokens scored per held-out text (as trained)"
    )
    args = parser.parse_args(argv)

    texts = [row["text"] for row in heldout_rows()]
    tokenizer, trained = load(args.model_dir)
    trained_loss, count = mean_token_loss(trained, tokenizer, texts, args.seq_length)
    print(
        f"[evaluate] held-out text: one docstring each of {', '.join(HELDOUT_MODULES)} (modules left out of "
        f"the training corpus), alpaca format, first {args.seq_length} tokens each: {count} predicted tokens"
    )
    if args.untrained_dir:
        _, untrained = load(args.untrained_dir)
        untrained_loss, _ = mean_token_loss(untrained, tokenizer, texts, args.seq_length)
        print(
            f"[evaluate] mean token loss   untrained (the converted starting point): {untrained_loss:.3f}   "
            f"trained: {trained_loss:.3f}   (uniform over the {len(tokenizer)} tokens: "
            f"{math.log(len(tokenizer)):.3f})"
        )
    else:
        print(f"[evaluate] mean token loss of the trained model: {trained_loss:.3f}")
    text = generate(trained, tokenizer, args.prompt, args.max_new_tokens)
    print(f"[generate] prompt: {args.prompt!r}")
    print(f"[generate] trained model's continuation ({args.max_new_tokens} tokens, greedy): {text!r}")
    print(f"[generate] {EXPECT}")
    return 0


if __name__ == "__main__":
    import mindspeed_llm

    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    sys.exit(main())
