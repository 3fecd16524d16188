"""Summarise a pretrain_gpt.py log: the loss per logged interval, the steps run, and one final-loss figure.

    python mindspeed_llm/quickstart/summary.py --log quickstart_output/logs/train_mcore_qwen25_tiny.log

A plain file (the standard library only): run so, it reads a log in a few milliseconds; ``python -m
mindspeed_llm.quickstart.summary`` works too but imports the package first (torch and megatron-core with it).
"""

from __future__ import annotations

import argparse
import re
import sys

_LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+).*?\blm loss: ([0-9.E+\-]+)")
_BATCH = re.compile(r"global batch size:\s*(\d+)")
_PLAN = re.compile(r"training \.\.\. iterations (\d+) to (\d+) \((\d+) steps(?:; continuing after the loaded "
                   r"checkpoint's iteration (\d+))?")


def losses_from_log(text: str) -> list[tuple[int, float]]:
    """(iteration, lm loss) for every Megatron-format iteration line of a training log.

    Each line's loss is the mean over the iterations since the previous line (Megatron-LM's --log-interval).
    """
    return [(int(m.group(1)), float(m.group(3))) for m in _LINE.finditer(text)]


def intervals(losses: list[tuple[int, float]], first_iteration: int) -> list[tuple[int, int, float]]:
    """(first, last iteration, mean loss) of each logged interval, the first starting at
    ``first_iteration``."""
    out, start = [], first_iteration
    for iteration, loss in losses:
        out.append((start, iteration, loss))
        start = iteration + 1
    return out


def _span(a: int, b: int) -> str:
    return f"{a}" if a == b else f"{a}-{b}"


def summarise(text: str) -> list[str]:
    """The summary lines for a training log; raises ValueError if the log shows no falling loss."""
    losses = losses_from_log(text)
    if len(losses) < 2:
        raise ValueError("fewer than two 'lm loss' lines: did training run?")
    plan = _PLAN.search(text)
    first = int(plan.group(1)) if plan else losses[0][0]
    last, steps = losses[-1][0], losses[-1][0] - first + 1
    spans = intervals(losses, first)
    batch = _BATCH.search(text)
    per_step = f" of {batch.group(1)} sequences" if batch else ""
    lines = ["[summary] lm loss, mean over each logged interval: "
             + " | ".join(f"iterations {_span(a, b)}: {loss:.3f}" for a, b, loss in spans)]
    ran = f"[summary] {steps} training steps ran, iterations {_span(first, last)}"
    if plan and plan.group(4):
        ran += (f": training continued after the converted checkpoint's iteration {plan.group(4)} "
                "(Megatron-LM counts a loaded checkpoint's iterations as done)")
    lines.append(ran)
    (a0, b0, loss0), (a1, b1, loss1) = spans[0], spans[-1]
    if not loss1 < loss0:
        raise ValueError(f"the loss did not fall ({loss0:.4f} -> {loss1:.4f})")
    lines.append(f"[summary] final loss {loss1:.3f}: the mean lm loss of iterations {_span(a1, b1)} "
                 f"({b1 - a1 + 1} steps{per_step}); it fell from {loss0:.3f} (iterations {_span(a0, b0)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        lines = summarise(text)
    except ValueError as exc:
        print(f"error: {args.log}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if "mindspeed_llm" in sys.modules:  # `python -m` imported the package, torch and megatron-core with it
        sys.modules["mindspeed_llm"].freeze_heap_at_exit()
    sys.exit(main())
