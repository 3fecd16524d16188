"""Summarise a pretrain_gpt.py log: the loss per logged iteration, and whether it fell.

    python -m mindspeed_llm.quickstart.summary --log quickstart_output/logs/train_mcore_qwen25_tiny.log
"""

from __future__ import annotations

import argparse
import re
import sys

_LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+).*?\blm loss: ([0-9.E+\-]+)")


def losses_from_log(text: str) -> list[tuple[int, float]]:
    """(iteration, lm loss) for every Megatron-format iteration line of a training log."""
    return [(int(m.group(1)), float(m.group(3))) for m in _LINE.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        losses = losses_from_log(f.read())
    if len(losses) < 2:
        print(f"error: {args.log} has fewer than two 'lm loss' lines: did training run?", file=sys.stderr)
        return 1
    print("[summary] lm loss by iteration: " + ", ".join(f"{it}: {loss:.3f}" for it, loss in losses))
    first, last = losses[0][1], losses[-1][1]
    if not last < first:
        print(f"error: the loss did not fall ({first:.4f} -> {last:.4f})", file=sys.stderr)
        return 1
    print(f"[summary] the loss fell from {first:.3f} to {last:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
