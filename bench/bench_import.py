"""Import cost of mindspeed_llm on top of megatron-core (goal: <= 0.5 s), and how fast the entry scripts
answer ``--help`` and a bad command line (goal: < 1 s), in fresh interpreters.

    python bench/bench_import.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import megatron.core, megatron.core.tensor_parallel, megatron.core.models.gpt
t2 = time.perf_counter()
import mindspeed_llm
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


# Launches that must answer before torch is imported: help, and a one-line error for a wrong path or flag.
ENTRY_COMMANDS = [
    ["pretrain_gpt.py", "--help"],
    [
        "pretrain_gpt.py",
        "--num-layers",
        "2",
        "--hidden-size",
        "64",
        "--num-attention-heads",
        "4",
        "--seq-length",
        "32",
        "--train-iters",
        "2",
        "--lr",
        "1e-3",
        "--swiglu",
        "--disable-bias-linear",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        "100",
        "--data-path",
        "/nonexistent/alpaca_text_document",
    ],
    ["convert_ckpt.py", "--help"],
    [
        "convert_ckpt.py",
        "--load-model-type",
        "hf",
        "--save-model-type",
        "mg",
        "--load-dir",
        "/nonexistent",
        "--save-dir",
        "/tmp/unused",
    ],
    ["preprocess_data.py", "--help"],
    [
        "preprocess_data.py",
        "--input",
        "/nonexistent.jsonl",
        "--output-prefix",
        "/tmp/unused/x",
        "--tokenizer-name-or-path",
        "/nonexistent",
    ],
]


def time_entry_commands(repeats: int) -> list[tuple[str, float, float]]:
    """(command, median s, max s) of each entry-script launch, wall time of the whole process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    for cmd in ENTRY_COMMANDS:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *cmd], capture_output=True, cwd=REPO, env=env)
            times.append(time.perf_counter() - t0)
        shown = " ".join(cmd[:2] + (["..."] if len(cmd) > 2 else []))
        rows.append((shown, statistics.median(times), max(times)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", PROBE], capture_output=True, text=True, check=True
        )
        rows.append([float(x) for x in out.stdout.split()])
    med = [statistics.median(col) for col in zip(*rows)]
    worst = [max(col) for col in zip(*rows)]
    print(f"| step ({args.repeats} fresh interpreters) | median s | max s |")
    print("|---|---|---|")
    for name, m, w in zip(["import torch", "import megatron.core (+gpt, tensor_parallel)",
                           "import mindspeed_llm (on top; applies base patches)"], med, worst):
        print(f"| {name} | {m:.3f} | {w:.3f} |")
    print(
        f"\ngoal: mindspeed_llm on top of megatron.core <= 0.5 s -> {'met' if med[2] <= 0.5 else 'NOT met'}"
    )

    entry = time_entry_commands(args.repeats)
    print(f"\n| command (python ..., {args.repeats} runs) | median s | max s |")
    print("|---|---|---|")
    for shown, m, w in entry:
        print(f"| `{shown}` | {m:.3f} | {w:.3f} |")
    slowest = max(m for _, m, _ in entry)
    print(f"\ngoal: every entry script answers in < 1 s (median) -> {'met' if slowest < 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
