"""Training throughput: pretrain_gpt.py vs a plain HF transformers + torch AdamW loop, same model and batch.

The model is Qwen2.5-shaped and ~55M parameters (8 layers, hidden 512, 8 heads / 2 KV groups, SwiGLU
1408, vocabulary 32000, untied, QKV bias). Both sides run in one process with the same thread count,
dtype, micro-batch and sequence length, each in its own subprocess; the first iterations are warm-up.

    python bench/bench_pretrain.py [--dtype bf16|fp32|both] [--threads 2] [--iters 8] [--warmup 2]
                                   [--rounds 1] [--ablate]

Reported: median and best per-iteration tokens/s (the best is the least disturbed by other load),
over the timed iterations of every round (``--rounds N`` repeats all runs, interleaved).
Baseline: ``Qwen2ForCausalLM(attn_implementation="sdpa")``, ``torch.optim.AdamW`` (torch's defaults:
the per-parameter loop on CPU), gradient clipping 1.0, random token batches. For bf16 the baseline
holds bf16 parameters and AdamW state (plain ``model.to(bfloat16)``) while pretrain_gpt keeps fp32
main weights: the compute dtype is the same, the optimizer does more work on our side.

A second baseline column runs the same HF loop with two of the things pretrain_gpt does on the CPU
(``--hf-tuned``): glibc told to keep freed blocks (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``,
as ``mindspeed_llm.patches.cpu_malloc`` does) and ``AdamW(fused=True)``. It shows how much of the
difference is those two and how much is the rest of the patch layer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


def run_pretrain(args, dtype: str, workdir: Path, env: dict | None = None) -> dict:
    prefix = workdir / "bench_text_document"
    if not Path(f"{prefix}.bin").exists():
        make_data(prefix, (args.iters + 4) * args.mbs * args.seq * 2)
    s = SHAPE
    cmd = [
        sys.executable,
        str(REPO / "pretrain_gpt.py"),
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
    cmd += args.extra.split()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO), **(env or {})}
    env.update(item.split("=", 1) for item in args.env)
    out = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
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


def hf_worker(args) -> dict:
    """The baseline loop (runs in its own process: ``--hf-worker``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    s = SHAPE
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = Qwen2Config(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["groups"], vocab_size=s["vocab"],
                      max_position_embeddings=args.seq, tie_word_embeddings=False, rope_theta=1e6,
                      rms_norm_eps=1e-6, attention_dropout=0.0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa").to(dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if args.tuned else {}))
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.iters):
        ids = torch.randint(0, s["vocab"], (args.mbs, args.seq), generator=gen)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": times[args.warmup:], "params": params}


def run_hf(args, dtype: str, tuned: bool = False) -> dict:
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
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if tuned:
        cmd.append("--tuned")
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**31 - 1), MALLOC_TRIM_THRESHOLD_=str(2**31 - 1),
                   MALLOC_TOP_PAD_=str(64 << 20))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"HF baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_worker:
        print(json.dumps(hf_worker(args)))
        return
    dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    runs = {
        "pretrain_gpt.py": lambda dtype, tmp: run_pretrain(args, dtype, tmp),
        "HF Qwen2 sdpa + AdamW loop": lambda dtype, tmp: run_hf(args, dtype),
        "HF loop + kept freed memory + fused AdamW": lambda dtype, tmp: run_hf(args, dtype, tuned=True),
    }
    if args.ablate:
        runs["pretrain_gpt.py, glibc malloc defaults"] = lambda dtype, tmp: run_pretrain(
            args, dtype, tmp, env={"MINDSPEED_LLM_CPU_MALLOC": "default"})
    seconds: dict = {}
    notes, params = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        # Rounds of interleaved runs, so that a change of load on the machine hits every run alike.
        for _ in range(args.rounds):
            for dtype in dtypes:
                for name, run in runs.items():
                    result = run(dtype, Path(tmp))
                    seconds.setdefault((dtype, name), []).extend(result["seconds"])
                    notes = notes or result.get("notes", [])
                    params = result.get("params", params)
    print(
        f"Qwen2.5-shaped {params / 1e6:.1f}M params, seq {args.seq}, micro-batch {args.mbs}, {args.threads} "
        f"threads, {args.rounds} round(s) of {args.iters - args.warmup} timed iterations after {args.warmup} "
        "warm-up"
    )
    print("| dtype | run | tokens/s median (best) | vs the HF loop, median (best) |")
    print("|---|---|---|---|")
    for dtype in dtypes:
        base = _rates(args, seconds[(dtype, "HF Qwen2 sdpa + AdamW loop")])
        for name in runs:
            rate = _rates(args, seconds[(dtype, name)])
            print(f"| {dtype} | {name} | {rate['tokens_per_s']:.0f} ({rate['best_tokens_per_s']:.0f}) | "
                  f"{rate['tokens_per_s'] / base['tokens_per_s']:.2f}x "
                  f"({rate['best_tokens_per_s'] / base['best_tokens_per_s']:.2f}x) |")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
