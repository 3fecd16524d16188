"""Training throughput: pretrain_gpt.py vs a plain HF transformers + torch AdamW loop, same model and batch.

The model is Qwen2.5-shaped and ~55M parameters (8 layers, hidden 512, 8 heads / 2 KV groups, SwiGLU
1408, vocabulary 32000, untied, QKV bias). Both sides run in one process with the same thread count,
dtype, micro-batch and sequence length, each in its own subprocess; the first iterations are warm-up.

    python bench/bench_pretrain.py [--dtype bf16|fp32|both] [--threads 2] [--iters 8] [--warmup 2]
                                   [--rounds 1] [--ablate] [--gemm]

Reported: median and best per-iteration tokens/s (the best is the least disturbed by other load),
over the timed iterations of every round (``--rounds N`` repeats all runs, interleaved).
The peer is run as a competent transformers user runs it (bench/peer.py): ``Qwen2ForCausalLM
(attn_implementation="sdpa")``, ``torch.optim.AdamW(fused=True)``, gradient clipping 1.0, the same
threads, random token batches; for bf16 fp32 weights under ``torch.autocast("cpu", bfloat16)`` (the
like-for-like of ``--bf16``: bf16 compute, fp32 main weights and optimizer). It runs twice, with glibc's
malloc defaults and with the environment that does what pretrain_gpt.py's ``patches/cpu_malloc.py``
does; ratios are against the faster of the two (by median).

``--gemm`` also times, in the same process as the report, the matrix products of the model's own linear
layers (forward, and both backward products, for one micro-batch) in fp32 and bf16, and prints each
step's linear-layer FLOP rate as a share of that GEMM rate (attention's products are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.peer import describe, ours_describe, peer_env  # noqa: E402

SHAPE = dict(layers=8, hidden=512, heads=8, groups=2, ffn=1408, vocab=32000)
_ELAPSED = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+)")


def make_data(prefix: Path, tokens: int, vocab: int = SHAPE["vocab"]) -> None:
    """An indexed dataset of random documents of 200-2000 tokens below ``vocab``."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    done = 0
    while done < tokens:
        n = int(rng.integers(200, 2000))
        builder.add_document(torch.from_numpy(rng.integers(0, vocab - 1, n).astype(np.int64)), [n])
        done += n
    builder.finalize(f"{prefix}.idx")


def pretrain_flags(args, dtype: str, prefix: Path) -> list[str]:
    """pretrain_gpt.py's command line (after the script) for the bench model."""
    s = SHAPE
    cmd = [
        "--num-layers",
        s["layers"],
        "--hidden-size",
        s["hidden"],
        "--ffn-hidden-size",
        s["ffn"],
        "--num-attention-heads",
        s["heads"],
        "--group-query-attention",
        "--num-query-groups",
        s["groups"],
        "--seq-length",
        args.seq,
        "--max-position-embeddings",
        args.seq,
        "--micro-batch-size",
        args.mbs,
        "--global-batch-size",
        args.mbs,
        "--train-iters",
        args.iters,
        "--lr",
        "1e-4",
        "--min-lr",
        "1e-5",
        "--lr-decay-style",
        "cosine",
        "--weight-decay",
        "0.1",
        "--clip-grad",
        "1.0",
        "--adam-beta1",
        "0.9",
        "--adam-beta2",
        "0.95",
        "--swiglu",
        "--disable-bias-linear",
        "--add-qkv-bias",
        "--untie-embeddings-and-output-weights",
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        "1e-6",
        "--position-embedding-type",
        "rope",
        "--rotary-base",
        "1000000",
        "--attention-dropout",
        "0",
        "--hidden-dropout",
        "0",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        s["vocab"] - 1,
        "--make-vocab-size-divisible-by",
        "1",
        "--data-path",
        prefix,
        "--split",
        "100,0,0",
        "--log-interval",
        "1",
        "--eval-iters",
        "0",
        "--num-workers",
        "0",
        "--log-throughput",
        "--use-flash-attn",
        "--use-fused-rmsnorm",
        "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
    ]
    if dtype == "bf16":
        cmd.append("--bf16")
    return [str(c) for c in cmd + args.extra.split()]


def run_pretrain(args, dtype: str, workdir: Path, env: dict | None = None) -> dict:
    prefix = workdir / "bench_text_document"
    if not Path(f"{prefix}.bin").exists():
        make_data(prefix, (args.iters + 4) * args.mbs * args.seq * 2)
    cmd = [sys.executable, str(REPO / "pretrain_gpt.py"), *pretrain_flags(args, dtype, prefix)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO), **(env or {})}
    env.update(item.split("=", 1) for item in args.env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(f"pretrain_gpt.py failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    ms = [float(m.group(2)) for m in _ELAPSED.finditer(out.stdout) if int(m.group(1)) > args.warmup]
    notes = [
        line for line in out.stdout.splitlines() if line.startswith(("NOTE", "> feature", "> host memory"))
    ]
    return {"seconds": [m / 1000 for m in ms], "notes": notes}


def _rates(args, seconds: list[float]) -> dict:
    """Median and best tokens/s over timed iterations (the best is the least disturbed by other load)."""
    ordered = sorted(seconds)
    median = ordered[len(ordered) // 2]
    tokens = args.mbs * args.seq
    return {"tokens_per_s": tokens / median, "best_tokens_per_s": tokens / ordered[0]}


def peer_model(seq: int):
    """The peer: transformers' ``Qwen2ForCausalLM`` (SDPA) of :data:`SHAPE`, fp32, seeded, training mode."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = SHAPE
    cfg = Qwen2Config(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["groups"], vocab_size=s["vocab"],
                      max_position_embeddings=seq, tie_word_embeddings=False, rope_theta=1e6,
                      rms_norm_eps=1e-6, attention_dropout=0.0)
    torch.manual_seed(0)
    return Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa").float().train()


def hf_worker(args) -> dict:
    """The baseline loop (runs in its own process: ``--hf-worker``)."""
    import torch

    from bench.peer import peer_adamw, peer_autocast

    torch.set_num_threads(args.threads)
    s = SHAPE
    model = peer_model(args.seq)
    opt = peer_adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.iters):
        ids = torch.randint(0, s["vocab"], (args.mbs, args.seq), generator=gen)
        t0 = time.perf_counter()
        with peer_autocast(args.dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": times[args.warmup:], "params": params}


def run_hf(args, dtype: str, malloc: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--hf-worker",
        "--dtype",
        dtype,
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--mbs",
        str(args.mbs),
        "--seq",
        str(args.seq),
    ]
    env = peer_env({**os.environ, "PYTHONPATH": str(REPO)}, args.threads, malloc)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"HF baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_shapes(args) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of every linear layer's product in one micro-batch (layers x 4, plus the output)."""
    s, t = SHAPE, args.mbs * args.seq
    kv = s["hidden"] // s["heads"] * s["groups"]
    layer = [(t, s["hidden"], s["hidden"] + 2 * kv), (t, s["hidden"], s["hidden"]),
             (t, s["hidden"], 2 * s["ffn"]), (t, s["ffn"], s["hidden"])]
    return layer * s["layers"] + [(t, s["hidden"], s["vocab"])]


def step_linear_flops(args) -> float:
    """Model FLOPs of the linear layers in one training step: forward and both backward products."""
    return sum(3 * 2 * t * i * o for t, i, o in linear_shapes(args))


def gemm_rate(args, dtype: str) -> float:
    """FLOP/s of the model's own linear products (forward, input gradient, weight gradient).

    The best of 3 timings per shape (of 1 in bf16 where the CPU has no bf16 instructions: minutes).
    """
    import torch

    from mindspeed_llm.ops.bf16_matmul import native_bf16_matmul

    torch.set_num_threads(args.threads)
    repeats = 1 if dtype == "bf16" and not native_bf16_matmul() else 3
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    unique = sorted(set(linear_shapes(args)))
    counts = {shape: linear_shapes(args).count(shape) for shape in unique}
    total_s = 0.0
    for t, i, o in unique:
        x, w, g = torch.randn(t, i, dtype=dt), torch.randn(o, i, dtype=dt), torch.randn(t, o, dtype=dt)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x @ w.t()
            g @ w
            g.t() @ x
            best = min(best, time.perf_counter() - t0)
        total_s += best * counts[(t, i, o)]
    return step_linear_flops(args) / total_s


PEERS = ("transformers, fused AdamW, glibc malloc defaults", "transformers, fused AdamW, malloc kept")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument(
        "--extra", default="", help="more pretrain_gpt.py flags, e.g. '--cross-entropy-loss-fusion'"
    )
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="environment for pretrain_gpt.py only, e.g. MINDSPEED_LLM_CPU_MALLOC=default")
    p.add_argument("--rounds", type=int, default=1, help="repeat the interleaved runs; iterations are pooled")
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also run pretrain_gpt.py with MINDSPEED_LLM_CPU_MALLOC=default (glibc's malloc defaults)",
    )
    p.add_argument("--gemm", action="store_true",
                   help="also time the model's own linear products and print each step's share of that rate")
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_worker:
        print(json.dumps(hf_worker(args)))
        return
    dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    runs = {
        "pretrain_gpt.py": lambda dtype, tmp: run_pretrain(args, dtype, tmp),
        PEERS[0]: lambda dtype, tmp: run_hf(args, dtype, malloc=False),
        PEERS[1]: lambda dtype, tmp: run_hf(args, dtype, malloc=True),
    }
    if args.ablate:
        runs["pretrain_gpt.py, glibc malloc defaults"] = lambda dtype, tmp: run_pretrain(
            args, dtype, tmp, env={"MINDSPEED_LLM_CPU_MALLOC": "default"})
    seconds: dict = {}
    notes, params, loads = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        # Rounds of interleaved runs, so that a change of load on the machine hits every run alike.
        for r in range(args.rounds):
            for dtype in dtypes:
                for name, run in runs.items():
                    result = run(dtype, Path(tmp))
                    seconds.setdefault((dtype, name), []).extend(result["seconds"])
                    notes = notes or result.get("notes", [])
                    params = result.get("params", params)
                    loads.append(os.getloadavg()[0])
            print(f"round {r + 1} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    print(
        f"Qwen2.5-shaped {params / 1e6:.1f}M params, seq {args.seq}, micro-batch {args.mbs}, {args.threads} "
        f"threads, {args.rounds} round(s) of {args.iters - args.warmup} timed iterations after {args.warmup} "
        f"warm-up; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the runs"
    )
    for dtype in dtypes:
        print(ours_describe(dtype, args.threads))
        print(describe(dtype, args.threads))
    print("| dtype | run | tokens/s median (best) | ours vs it, median (best) |")
    print("|---|---|---|---|")
    for dtype in dtypes:
        ours = _rates(args, seconds[(dtype, "pretrain_gpt.py")])
        for name in runs:
            rate = _rates(args, seconds[(dtype, name)])
            print(f"| {dtype} | {name} | {rate['tokens_per_s']:.0f} ({rate['best_tokens_per_s']:.0f}) | "
                  f"{ours['tokens_per_s'] / rate['tokens_per_s']:.2f}x "
                  f"({ours['best_tokens_per_s'] / rate['best_tokens_per_s']:.2f}x) |")
        best = max((_rates(args, seconds[(dtype, name)]) for name in PEERS), key=lambda r: r["tokens_per_s"])
        print(f"| {dtype} | **ours vs the peer at its best** | | "
              f"**{ours['tokens_per_s'] / best['tokens_per_s']:.2f}x** "
              f"({ours['best_tokens_per_s'] / best['best_tokens_per_s']:.2f}x) |")
    if args.gemm:
        flops = step_linear_flops(args)
        tokens = args.mbs * args.seq
        print(f"\nlinear-layer FLOPs per step {flops / 1e9:.1f} G; GEMM rate of the model's own linear "
              "products (forward + both backward, this process):")
        print("| dtype | GEMM GFLOP/s | run | step GFLOP/s (median) | share of the GEMM rate |\n"
              "|---|---|---|---|---|")
        for dtype in dtypes:
            rate = gemm_rate(args, dtype)
            fp32_rate = gemm_rate(args, "fp32") if dtype == "bf16" else rate
            for name in runs:
                step = flops * _rates(args, seconds[(dtype, name)])["tokens_per_s"] / tokens
                print(f"| {dtype} | {rate / 1e9:.0f} (fp32 {fp32_rate / 1e9:.0f}) | {name} | "
                      f"{step / 1e9:.0f} | {100 * step / rate:.0f}% "
                      f"({100 * step / fp32_rate:.0f}% of fp32's) |")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
