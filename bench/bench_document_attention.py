"""Document-masked (packed-sample) attention forward+backward: time and peak memory against plain causal
attention.

    python bench/bench_document_attention.py [--seqs 1024 4096 8192] [--dtype fp32] [--threads 1]
        [--impls causal per_document sdpa_mask blockwise_mask] [--heads 28 --groups 4 --head-dim 128]

Qwen2.5-7B-like attention (28 query heads, 4 KV groups, head dim 128), batch 1, dropout 0. One sample of
``seq`` tokens packed with documents of alpaca-like lengths (drawn with a fixed seed, uniform in
``--doc-min``..``--doc-max`` tokens, the last one cut to fill the sample). Implementations:

* ``causal``: plain causal attention over the whole sample, as ``--use-flash-attn`` runs it (the baseline:
  what packing without ``--reset-attention-mask`` costs);
* ``per_document``, ``sdpa_mask``, ``blockwise_mask``:
  :func:`mindspeed_llm.ops.document_attention.document_attention` with that ``impl`` (see its module
  docstring).

Every case runs in a fresh process (a small warm-up, then ``--repeats`` timed passes, the minimum reported);
peak memory as in bench/bench_attention.py (rise of peak RSS over RSS before the timed passes, glibc's mmap
threshold fixed). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
IMPLS = ("causal", "per_document", "sdpa_mask", "blockwise_mask")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def document_lengths(seq: int, low: int, high: int, seed: int = 0) -> list[int]:
    """Alpaca-like document lengths filling ``seq`` tokens (fixed seed; the last document is cut)."""
    rng = random.Random(seed)
    lengths = []
    while sum(lengths) < seq:
        lengths.append(min(rng.randint(low, high), seq - sum(lengths)))
    return lengths


def run_case(impl: str, seq: int, dtype_name: str, args: argparse.Namespace) -> dict:
    """One measurement in this process (called in a fresh subprocess by :func:`main`)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mindspeed_llm.ops.attention_kernels import flash_attention
    from mindspeed_llm.ops.document_attention import document_attention

    dtype = getattr(torch, DTYPES[dtype_name])
    lengths = document_lengths(seq, args.doc_min, args.doc_max)
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)

    def step(q, k, v, grad, cu_seqlens):
        if impl == "causal":
            out = flash_attention(q, k, v, causal=True, layout="sbnd")
        else:
            out = document_attention(q, k, v, cu_seqlens, impl=impl)
        out.backward(grad)

    def tensors(s):
        q = torch.randn(s, 1, args.heads, args.head_dim, dtype=dtype, requires_grad=True)
        k = torch.randn(s, 1, args.groups, args.head_dim, dtype=dtype, requires_grad=True)
        v = torch.randn(s, 1, args.groups, args.head_dim, dtype=dtype, requires_grad=True)
        return q, k, v, torch.ones_like(q)

    warm = tensors(256)
    step(*warm, torch.tensor([0, 100, 256], dtype=torch.int32))  # warm-up: kernels, thread pools
    del warm
    q, k, v, grad = tensors(seq)
    base = _rss_mib()
    times = []
    for _ in range(args.repeats):
        q.grad = k.grad = v.grad = None
        start = time.perf_counter()
        step(q, k, v, grad, cu)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "seq": seq, "dtype": dtype_name, "time_s": min(times), "times": times,
            "peak_mib": peak - base, "documents": len(lengths)}


def _spawn(args: argparse.Namespace, impl: str, seq: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", impl, str(seq), "--dtype", args.dtype,
           "--heads", str(args.heads), "--groups", str(args.groups), "--head-dim", str(args.head_dim),
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--doc-min", str(args.doc_min),
           "--doc-max", str(args.doc_max)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {impl} {seq} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (0: torch's default)")
    parser.add_argument("--doc-min", type=int, default=64, help="shortest document (tokens)")
    parser.add_argument("--doc-max", type=int, default=512, help="longest document (tokens)")
    parser.add_argument("--case", nargs=2, metavar=("IMPL", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.dtype, args)))
        return

    import torch

    print(
        f"# bench_document_attention: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
        f"({args.threads or torch.get_num_threads()} threads), heads {args.heads}/{args.groups} kv, head dim "
        f"{args.head_dim}, batch 1, {args.dtype}, documents {args.doc_min}-{args.doc_max} tokens, fwd+bwd, "
        f"min of {args.repeats}"
    )
    rows = []
    for seq in args.seqs:
        results = {impl: _spawn(args, impl, seq) for impl in args.impls}
        rows.append((seq, results))
        print(f"  done {seq}: " + ", ".join(f"{i} {r['time_s']:.2f}s {r['peak_mib']:.0f}MiB"
                                           for i, r in results.items()), file=sys.stderr)
    print(
        "| seq | documents | impl | fwd+bwd time (s) | peak memory (MiB) | time vs causal | memory vs causal "
        "|"
    )
    print("|---|---|---|---|---|---|---|")
    for seq, results in rows:
        ref = results.get("causal")
        for impl, r in results.items():
            t_ratio = f"{r['time_s'] / ref['time_s']:.2f}x" if ref else "-"
            m_ratio = f"{r['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f}x" if ref else "-"
            print(
                f"| {seq} | {r['documents']} | {impl} | {r['time_s']:.2f} | {r['peak_mib']:.0f} | {t_ratio} "
                f"| {m_ratio} |"
            )


if __name__ == "__main__":
    main()
