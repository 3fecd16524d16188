"""Generate a few tokens with transformers from an HF folder (the quick start's last step).

    python -m mindspeed_llm.quickstart.generate --model-dir DIR --prompt "..." --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import sys


def generate(model_dir: str, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy-decode ``max_new_tokens`` after ``prompt`` with ``AutoModelForCausalLM``; returns the new text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="an HF model folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--prompt", default="### Instruction:\nExplain what `json.dumps` does in Python.\n\n### Response:\n")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    text = generate(args.model_dir, args.prompt, args.max_new_tokens)
    print(f"[generate] prompt: {args.prompt!r}")
    print(f"[generate] continuation ({args.max_new_tokens} tokens, greedy): {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
