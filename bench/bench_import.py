"""Import cost of mindspeed_llm on top of megatron-core (goal: <= 0.5 s), in fresh interpreters.

    python bench/bench_import.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE], capture_output=True, text=True, check=True)
        rows.append([float(x) for x in out.stdout.split()])
    med = [statistics.median(col) for col in zip(*rows)]
    worst = [max(col) for col in zip(*rows)]
    print(f"| step ({args.repeats} fresh interpreters) | median s | max s |")
    print("|---|---|---|")
    for name, m, w in zip(["import torch", "import megatron.core (+gpt, tensor_parallel)",
                           "import mindspeed_llm (on top; applies base patches)"], med, worst):
        print(f"| {name} | {m:.3f} | {w:.3f} |")
    print(f"\ngoal: mindspeed_llm on top of megatron.core <= 0.5 s -> {'met' if med[2] <= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
