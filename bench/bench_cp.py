"""Context parallelism on the CPU: time and peak memory per rank, one attention layer and a full training step.

    python bench/bench_cp.py [--seqs 8192 16384 32768] [--cps 1 2 4]
        [--algos megatron_cp_algo ulysses_cp_algo hybrid_cp_algo] [--ulysses-degree 2]
        [--parts attention step] [--heads 4 --groups 2 --head-dim 64] [--repeats 2] [--doc-length N]

``attention``: causal self-attention forward + backward of one layer (batch 1, fp32, ``--heads`` query heads,
``--groups`` K/V groups, head dim ``--head-dim``) on CP gloo ranks launched by torchrun: CP 1 runs the project's
``flash_attention`` (torch's CPU flash kernel), CP > 1
:func:`~mindspeed_llm.ops.context_parallel_kernels.ring_attention`,
:func:`~mindspeed_llm.ops.context_parallel_kernels.ulysses_attention` or
:func:`~mindspeed_llm.ops.context_parallel_kernels.hybrid_attention` (``--ulysses-degree`` U, only where
1 < U < CP) on
each rank's ``seq / CP`` tokens. Reported per
rank (the slowest and the largest): time (min of ``--repeats``) and peak memory (rise of peak RSS over RSS
before the timed passes, glibc's mmap threshold fixed so freed blocks return); "work per token vs CP 1" is
``CP x time / time at CP 1``: the ring's overhead when every rank has its own core (1.0 = none).
``--doc-length N`` (attention only): packed samples, documents of ``N / 2 .. 3N / 2`` tokens (seeded) attending
within themselves: CP 1 runs :func:`~mindspeed_llm.ops.document_attention.document_attention`, CP > 1 the
algorithms with the whole sequence's documents (``document_ids`` / ``cu_seqlens``).

``step``: a full ``pretrain_gpt.py`` step (``--mock-data``, a 2-layer Qwen2.5-shaped model, hidden 256, 4 heads /
2 groups, vocabulary 1024, fp32, ``--use-flash-attn``): the log's elapsed time per iteration (the last of 3) and
the max RSS its memory report prints (after step 1; the larger of the first and last rank), less the same
launch's at sequence 256 x CP (imports, model, optimizer: what does not grow with the sequence).

Every case is a fresh torchrun launch with ``OMP_NUM_THREADS=1``. Prints markdown tables with the load average
at each case's start; ``--results FILE`` keeps measured cases so a sweep can run in pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = ("megatron_cp_algo", "ulysses_cp_algo", "hybrid_cp_algo")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def attention_worker(args: argparse.Namespace) -> None:
    """One rank of an attention case: prints a JSON line per rank."""
    import torch
    import torch.distributed as dist

    import mindspeed_llm  # noqa: F401  (gloo on the CPU)
    from mindspeed_llm.ops.attention_kernels import flash_attention
    from mindspeed_llm.ops.context_parallel_kernels import (
        hybrid_attention,
        hybrid_cp_rank_groups,
        ring_attention,
        ulysses_attention,
    )
    from mindspeed_llm.ops.document_attention import document_attention, ulysses_document_attention
    from mindspeed_llm.ops.packing import document_ids, document_packed_seq_params

    dist.init_process_group("gloo")
    cp, rank = dist.get_world_size(), dist.get_rank()
    group = dist.new_group(list(range(cp)))
    sub_groups = []
    if args.algo == "hybrid_cp_algo":  # this rank's [Ulysses, ring] sub-groups (every rank creates every group)
        ulysses, ring = hybrid_cp_rank_groups(list(range(cp)), args.ulysses_degree)
        sub_groups = [g for ranks, g in ((r, dist.new_group(r)) for r in ulysses + ring) if rank in ranks]

    def step(q, k, v, docs=None):
        cu, ids = docs or (None, None)
        if cp == 1:
            out = flash_attention(q, k, v, causal=True, layout="sbnd") if cu is None else \
                document_attention(q, k, v, cu)
        elif args.algo == "ulysses_cp_algo":
            out = ulysses_attention(q, k, v, group) if cu is None else \
                ulysses_document_attention(q, k, v, group, cu)
        elif args.algo == "hybrid_cp_algo":
            out = hybrid_attention(q, k, v, *sub_groups, document_ids=ids)
        else:
            out = ring_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), group,
                                 document_ids=ids).permute(2, 0, 1, 3)
        out.backward(torch.ones_like(out))

    def documents(s):
        """(cu_seqlens, document ids) of one packed sample of ``s`` tokens, or None without --doc-length."""
        if not args.doc_length:
            return None
        gen, lengths = torch.Generator().manual_seed(0), []
        while sum(lengths) < s:
            lengths.append(int(torch.randint(max(1, args.doc_length // 2), args.doc_length * 3 // 2 + 1, (1,),
                                             generator=gen)))
        lengths[-1] -= sum(lengths) - s
        psp = document_packed_seq_params(torch.cat([torch.arange(n) for n in lengths])[None])
        return psp.cu_seqlens_q, document_ids(psp.cu_seqlens_q, 1, s)

    def tensors(s):
        shapes = [(s, 1, args.heads, args.head_dim)] + [(s, 1, args.groups, args.head_dim)] * 2
        return [torch.randn(*shape, requires_grad=True) for shape in shapes]

    step(*tensors(64 * cp), documents(64 * cp * cp))  # warm-up: kernels, thread pools, the gloo pairs
    q, k, v = tensors(args.seq // cp)
    docs = documents(args.seq)
    base = _rss_mib()
    times = []
    for _ in range(args.repeats):
        q.grad = k.grad = v.grad = None
        dist.barrier(group)
        start = time.perf_counter()
        step(q, k, v, docs)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = [None] * cp
    dist.all_gather_object(results, {"rank": rank, "time_s": min(times), "peak_mib": peak - base})
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def _torchrun(nproc: int, *cmd: str, timeout: int) -> str:
    import socket

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    for _ in range(3):  # another launch on the shared machine may take the free port between pick and bind
        with socket.socket() as sock:  # a free port (a fixed one collides with other launches)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        full = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
                "127.0.0.1", "--master-port", str(port), *cmd]
        proc = subprocess.run(full, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
        if "EADDRINUSE" not in proc.stderr:
            break
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def attention_case(args: argparse.Namespace, seq: int, cp: int, algo: str) -> dict:
    """Slowest rank's time and largest rank's peak memory of one attention case."""
    out = _torchrun(cp, os.path.abspath(__file__), "--worker", "--seq", str(seq), "--algo", algo, "--heads",
                    str(args.heads), "--groups", str(args.groups), "--head-dim", str(args.head_dim), "--repeats",
                    str(args.repeats), "--ulysses-degree", str(args.ulysses_degree), "--doc-length",
                    str(args.doc_length), timeout=args.timeout)
    ranks = next(json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT "))
    return {"time_s": max(r["time_s"] for r in ranks), "peak_mib": max(r["peak_mib"] for r in ranks)}


def step_case(args: argparse.Namespace, seq: int, cp: int, algo: str) -> dict:
    """Elapsed time per iteration and the rise of the max RSS (largest reporting rank) over the launch at 256 * CP."""
    run, base = _step_run(args, seq, cp, algo), _step_run(args, 256 * cp, cp, algo)
    return {"time_s": run["time_s"], "peak_mib": run["peak_mib"] - base["peak_mib"]}


def _step_run(args: argparse.Namespace, seq: int, cp: int, algo: str) -> dict:
    """Elapsed time per iteration and the max RSS of the first and last rank (the larger) of a 3-step run."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--num-layers", "2", "--hidden-size", "256", "--ffn-hidden-size", "512", "--num-attention-heads", "4",
                 "--group-query-attention", "--num-query-groups", "2", "--seq-length", str(seq),
                 "--max-position-embeddings", str(seq), "--position-embedding-type", "rope", "--normalization",
                 "RMSNorm", "--swiglu", "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
                 "--tokenizer-type", "NullTokenizer", "--vocab-size", "1023", "--mock-data", "--micro-batch-size", "1",
                 "--global-batch-size", "1", "--train-iters", "3", "--lr", "1e-4", "--log-interval", "1",
                 "--eval-iters", "0", "--use-flash-attn", "--context-parallel-size", str(cp),
                 "--context-parallel-algo", algo, "--data-cache-path", tmp]
        if algo == "hybrid_cp_algo":
            flags += ["--ulysses-degree-in-cp", str(args.ulysses_degree)]
        out = _torchrun(cp, os.path.join(ROOT, "pretrain_gpt.py"), *flags, timeout=args.timeout)
    times = [float(m) for m in re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+)", out)]
    rss = [float(m) for m in re.findall(r"\[Rank \d+\].*max rss: ([0-9.]+)", out)]  # the first and last rank
    return {"time_s": times[-1] / 1000, "peak_mib": max(rss) if rss else float("nan")}


def _table(title: str, rows: list[tuple], memory_label: str) -> None:
    print(f"\n{title}\n")
    print(f"| seq | CP | algorithm | time per rank (s) | {memory_label} | memory vs CP 1 | work per token vs CP 1 "
          "| load average |")
    print("|---|---|---|---|---|---|---|---|")
    for seq, cp, algo, r, ref in rows:
        mem = r["peak_mib"] / ref["peak_mib"] if ref else float("nan")
        work = cp * r["time_s"] / ref["time_s"] if ref else float("nan")
        print(f"| {seq} | {cp} | {algo} | {r['time_s']:.2f} | {r['peak_mib']:.0f} | {mem:.2f} | {work:.2f} | "
              f"{r.get('load', float('nan')):.1f} |")


def _case_key(part: str, seq: int, cp: int, algo: str) -> str:
    return f"{part} {seq} {cp} {algo if cp > 1 else '-'}"


def _load_results(path: str | None) -> dict:
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _algos_at(args: argparse.Namespace, cp: int) -> list[str]:
    """The algorithms that run at this CP size (hybrid needs 1 < U < CP with U dividing CP)."""
    u = args.ulysses_degree
    return [a for a in args.algos if a != "hybrid_cp_algo" or (1 < u < cp and cp % u == 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--parts", nargs="+", default=["attention", "step"], choices=["attention", "step"])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--ulysses-degree", type=int, default=2, help="hybrid_cp_algo's --ulysses-degree-in-cp")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--doc-length", type=int, default=0,
                        help="attention only: packed documents of about N tokens (0: one causal sequence)")
    parser.add_argument("--results", default=None,
                        help="JSON file of measured cases: cases already in it are not rerun, new ones are added "
                             "(a sweep can be run in pieces; CP 1 rows serve as the reference of later CP rows)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--algo", default="megatron_cp_algo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        attention_worker(args)
        return
    if args.doc_length and "step" in args.parts:
        parser.error("--doc-length measures the attention layer only: add --parts attention")

    import torch

    print(f"# bench_cp: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, OMP_NUM_THREADS=1 per rank, fp32, batch 1, "
          f"{time.strftime('%Y-%m-%d')}")
    results = _load_results(args.results)
    for part, case, label in (("attention", attention_case, "peak memory per rank (MiB)"),
                              ("step", step_case, "max RSS rise, largest rank (MiB)")):
        if part not in args.parts:
            continue
        rows = []
        for seq in args.seqs:
            for cp in args.cps:
                for algo in (_algos_at(args, cp) if cp > 1 else args.algos[:1]):
                    key = _case_key(part, seq, cp, algo) + (f" docs {args.doc_length}" if args.doc_length else "")
                    if key not in results:
                        load = os.getloadavg()[0]
                        results[key] = {**case(args, seq, cp, algo), "load": load}
                        if args.results:
                            with open(args.results, "w") as f:
                                json.dump(results, f, indent=1)
                    r = results[key]
                    print(f"  {key}: {r['time_s']:.2f}s {r['peak_mib']:.0f}MiB load {r['load']:.1f}",
                          file=sys.stderr, flush=True)
                    ref = _case_key(part, seq, 1, "-") + (f" docs {args.doc_length}" if args.doc_length else "")
                    rows.append((seq, cp, algo if cp > 1 else "-", r, results.get(ref)))
        docs = f", packed documents of ~{args.doc_length} tokens" if args.doc_length else ""
        title = (f"one attention layer, fwd+bwd ({args.heads} heads / {args.groups} groups, head dim {args.head_dim}"
                 f"{docs})"
                 if part == "attention" else "full pretrain_gpt.py step (2 layers, hidden 256, vocabulary 1024)")
        _table(title, rows, label)


if __name__ == "__main__":
    main()
