"""Core attention forward+backward: time and peak memory, ours vs megatron-core's local DotProductAttention.

    python bench/bench_attention.py [--seqs 2048 4096] [--dtypes fp32 bf16] [--heads 28 --groups 4
        --head-dim 128] [--repeats 2] [--impls megatron ours blockwise]

Qwen2.5-7B-like attention (28 query heads, 4 KV groups, head dim 128), batch 1, causal mask built
by the module (``attention_mask=None``), dropout 0 (Qwen2.5's setting; ``--dropout`` to change).
Implementations:

* ``megatron``: ``megatron.core.transformer.dot_product_attention.DotProductAttention``;
* ``ours``: ``mindspeed_llm.ops.attention.FlashDotProductAttention`` as ``--use-flash-attn``
  installs it (on CPU without dropout: torch SDPA's flash kernel with native GQA);
* ``blockwise``: the same module forced to the pure-torch blockwise kernel (``impl='blockwise'``).

Every (implementation, length, dtype) runs in a fresh process: one small warm-up, then
``--repeats`` timed forward+backward passes (the minimum is reported). Peak memory is the increase
of the process's peak RSS (``ru_maxrss``) over its RSS just before the timed passes, with the
inputs already allocated: what the pass itself needed (glibc's mmap threshold is fixed so freed
blocks leave RSS at once). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(impl: str, seq: int, dtype_name: str, heads: int, groups: int, head_dim: int, repeats: int,
             dropout: float = 0.0, threads: int = 0) -> dict:
    """One measurement in this process (called in a fresh subprocess by :func:`main`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    import mindspeed_llm  # noqa: F401  - CPU device layer
    from mindspeed_llm.ops.attention import FlashDotProductAttention

    dtype = getattr(torch, DTYPES[dtype_name])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1234)
    config = TransformerConfig(
        num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads, num_query_groups=groups,
        kv_channels=head_dim, attention_dropout=dropout, bf16=dtype == torch.bfloat16, params_dtype=dtype,
    )
    cls = DotProductAttention if impl == "megatron" else FlashDotProductAttention
    module = cls(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    if impl == "blockwise":
        module.impl = "blockwise"

    def step(s: int) -> None:
        q = torch.randn(s, 1, heads, head_dim, dtype=dtype, requires_grad=True)
        k = torch.randn(s, 1, groups, head_dim, dtype=dtype, requires_grad=True)
        v = torch.randn(s, 1, groups, head_dim, dtype=dtype, requires_grad=True)
        out = module(q, k, v, None)
        out.backward(torch.ones_like(out))

    step(256)  # warm-up: kernels, thread pools
    q = torch.randn(seq, 1, heads, head_dim, dtype=dtype, requires_grad=True)
    k = torch.randn(seq, 1, groups, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(seq, 1, groups, head_dim, dtype=dtype, requires_grad=True)
    grad = torch.ones(seq, 1, heads * head_dim, dtype=dtype)
    base = _rss_mib()
    times = []
    for _ in range(repeats):
        q.grad = k.grad = v.grad = None
        start = time.perf_counter()
        out = module(q, k, v, None)
        out.backward(grad)
        times.append(time.perf_counter() - start)
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "seq": seq, "dtype": dtype_name, "time_s": min(times), "times": times,
            "peak_mib": peak - base}


def _spawn(args: argparse.Namespace, impl: str, seq: int, dtype: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", impl, str(seq), dtype,
           "--heads", str(args.heads), "--groups", str(args.groups), "--head-dim", str(args.head_dim),
           "--repeats", str(args.repeats), "--dropout", str(args.dropout),
           "--threads", str(args.threads)]
    # Fixed mmap threshold: glibc then returns every large freed block to the OS at once, so RSS
    # follows live memory (its default dynamic threshold would keep freed blocks and hide peaks).
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {impl} {seq} {dtype} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--impls", nargs="+", default=["megatron", "ours", "blockwise"],
                        choices=["megatron", "ours", "blockwise"])
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="attention dropout (ours then runs the blockwise kernel: SDPA's CPU flash has none)",
    )
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per case (0: torch's default). On a machine shared with other "
                             "work, 1 avoids OpenMP barrier stalls that penalise many-small-op kernels")
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "SEQ", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        impl, seq, dtype = args.case
        print(json.dumps(run_case(impl, int(seq), dtype, args.heads, args.groups, args.head_dim, args.repeats,
                                  args.dropout, args.threads)))
        return

    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"# bench_attention: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f}, torch {torch.__version__} ({threads} threads), heads "
        f"{args.heads}/{args.groups} kv, head dim {args.head_dim}, batch 1, causal, dropout {args.dropout}, "
        f"fwd+bwd, min of {args.repeats}"
    )
    rows = []
    for dtype in args.dtypes:
        for seq in args.seqs:
            results = {impl: _spawn(args, impl, seq, dtype) for impl in args.impls}
            rows.append((dtype, seq, results))
            print(f"  done {dtype} {seq}: " + ", ".join(f"{i} {r['time_s']:.2f}s {r['peak_mib']:.0f}MiB"
                                                       for i, r in results.items()), file=sys.stderr)
    header = (
        "| dtype | seq | impl | fwd+bwd time (s) | peak memory (MiB) | time vs megatron | memory vs "
        "megatron |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for dtype, seq, results in rows:
        ref = results.get("megatron")
        for impl, r in results.items():
            t_ratio = f"{r['time_s'] / ref['time_s']:.2f}x" if ref else "-"
            m_ratio = f"{r['peak_mib'] / ref['peak_mib']:.3f}x" if ref else "-"
            print(
                f"| {dtype} | {seq} | {impl} | {r['time_s']:.2f} | {r['peak_mib']:.0f} | {t_ratio} | "
                f"{m_ratio} |"
            )


if __name__ == "__main__":
    main()
