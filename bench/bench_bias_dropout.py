"""megatron-core's bias-dropout-add on the CPU: ``torch.compile``'d (Megatron-LM's default
``--bias-dropout-fusion``) against eager torch (``--no-bias-dropout-fusion``, what our pretrain_gpt.py runs).

Why the Megatron-LM drop-in turns the fusion off on the CPU (mindspeed_llm/patches/megatron_lm_defaults.py).
Forward and backward of one call, no bias (``--disable-bias-linear``), dropout 0.1, fp32, one thread by
default; interleaved rounds, best of each round's mean; the first calls (compilation) are not timed.

    python bench/bench_bias_dropout.py [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

SHAPES = ((128, 2, 128), (512, 2, 512), (2048, 1, 4096))  # [sequence, batch, hidden]


def _time(fn, x, residual, calls: int) -> float:
    grad = None
    start = time.perf_counter()
    for _ in range(calls):
        out = fn((x, None), residual, 0.1)
        grad = torch.ones_like(out) if grad is None else grad
        out.backward(grad)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    warnings.simplefilter("ignore")
    from megatron.core.fusions import fused_bias_dropout

    torch.set_num_threads(opts.threads)
    sides = {"compiled": fused_bias_dropout.bias_dropout_add_fused_train,
             "eager": fused_bias_dropout.bias_dropout_add_unfused(True)}
    print(f"torch {torch.__version__}, {opts.threads} thread(s), dropout 0.1, fp32, forward + backward")
    print("| shape [s, b, h] | compiled ms | eager ms | compiled / eager |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        x = torch.randn(*shape, requires_grad=True)
        residual = torch.randn(*shape, requires_grad=True)
        calls = 40 if shape[0] * shape[2] < 10**6 else 4
        for fn in sides.values():  # compile and warm up
            _time(fn, x, residual, 3)
        best = dict.fromkeys(sides, float("inf"))
        for _ in range(opts.rounds):  # interleaved
            for name, fn in sides.items():
                best[name] = min(best[name], _time(fn, x, residual, calls))
        print(f"| {list(shape)} | {best['compiled']:.3f} | {best['eager']:.3f} | "
              f"{best['compiled'] / best['eager']:.2f}x |")


if __name__ == "__main__":
    main()
