"""Mixture of experts: one training step of a Qwen3-MoE-shaped model, pretrain_gpt.py vs transformers'
own ``Qwen3MoeForCausalLM``, and pretrain_gpt.py's tokens/s at EP1 vs EP2 on 2 processes.

The model is Qwen3-30B-A3B's shape scaled down (4 layers, hidden 512, 8 query heads / 2 KV groups of
head_dim 128, per-head q/k RMSNorms, 32 experts of FFN 256 per layer, top-4 renormalised, vocabulary 16000,
untied), fp32.
Every side trains the same global batch per step (``--gbs`` sequences of ``--seq`` random tokens) with the
router's load-balancing loss (coefficient 0.001) and gradient clipping 1.0:

- ``transformers``: ``Qwen3MoeForCausalLM(attn_implementation="sdpa")`` with ``output_router_logits=True``,
  ``torch.optim.AdamW(fused=True)``, glibc told to keep freed blocks as pretrain_gpt.py does on the CPU
  (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/``MALLOC_TOP_PAD_``, see
  ``mindspeed_llm.patches.cpu_malloc``), one process with ``--threads`` threads; once per experts
  implementation transformers offers on this torch (``eager``: a loop over the hit experts; ``grouped_mm``:
  ``torch._grouped_mm``/``F.grouped_mm`` over the tokens sorted by expert): its best is the baseline.
  (``batched_mm`` gathers one weight matrix per routed token copy: 0.10x ``grouped_mm`` at seq 64 here and
  gigabytes at seq 512; ``--hf-impls eager grouped_mm batched_mm`` runs it.)
- ``pretrain_gpt.py``, 1 process x ``--threads`` threads: the whole batch in one micro-batch, grouped experts
  (``--moe-grouped-gemm``), the distributed optimizer off (one rank).
- ``pretrain_gpt.py`` under torchrun, 2 processes x ``--threads / 2`` threads: data parallel 2 (half the batch
  each), at EP1 (each process holds all 32 experts) and at EP2 (16 each; ``alltoall`` and ``allgather``
  dispatchers), the distributed optimizer.

    python bench/bench_moe.py [--threads 2] [--iters 4] [--warmup 1] [--seq 256] [--gbs 2] [--rounds 2]

Each run is its own process (or torchrun); ``--rounds N`` repeats all runs interleaved (transformers, ours,
transformers, ...) and pools their timed iterations, so that other load on the machine falls on every run
alike.
Reported: median and best step time as tokens/s (the best is the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(layers=4, hidden=512, heads=8, groups=2, head_dim=128, experts=32, topk=4, moe_ffn=256,
             dense_ffn=1024, vocab=16000)
AUX_COEFF = 0.001
sys.path.insert(0, str(REPO))

from bench.bench_pretrain import make_data  # noqa: E402
from bench.peer import MALLOC_ENV  # noqa: E402 - glibc's environment for what patches/cpu_malloc.py sets

_ELAPSED = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pretrain_flags(args, prefix: Path, nproc: int, ep: int, dispatcher: str) -> list[str]:
    """pretrain_gpt.py's flags for the benchmark model; one global batch of ``args.gbs`` sequences a step."""
    s = SHAPE
    mbs = args.gbs // nproc
    flags = [
        "--num-layers", s["layers"], "--hidden-size", s["hidden"], "--ffn-hidden-size", s["dense_ffn"],
        "--num-attention-heads", s["heads"], "--group-query-attention", "--num-query-groups", s["groups"],
        "--kv-channels", s["head_dim"], "--qk-layernorm",
        "--num-experts", s["experts"], "--moe-router-topk", s["topk"], "--moe-ffn-hidden-size", s["moe_ffn"],
        "--norm-topk-prob", "--moe-grouped-gemm", "--moe-token-dispatcher-type", dispatcher,
        "--moe-router-load-balancing-type", "aux_loss", "--moe-aux-loss-coeff", AUX_COEFF,
        "--expert-model-parallel-size", ep,
        "--seq-length", args.seq, "--max-position-embeddings", args.seq,
        "--micro-batch-size", mbs, "--global-batch-size", args.gbs, "--train-iters", args.iters,
        "--lr", "1e-4", "--min-lr", "1e-5", "--lr-decay-style", "cosine", "--weight-decay", "0.1",
        "--clip-grad", "1.0", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
        "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
        "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--position-embedding-type", "rope",
        "--rotary-base", "1000000", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", s["vocab"] - 1,
        "--make-vocab-size-divisible-by", "1",
        "--data-path", prefix, "--split", "100,0,0", "--log-interval", "1", "--eval-iters", "0",
        "--num-workers", "0", "--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
    ]
    if nproc > 1:
        flags.append("--use-distributed-optimizer")
    return [str(f) for f in flags]


def run_pretrain(args, workdir: Path, nproc: int, ep: int, dispatcher: str = "alltoall") -> dict:
    prefix = workdir / "bench_text_document"
    if not Path(f"{prefix}.bin").exists():
        make_data(prefix, (args.iters + 4) * args.gbs * (args.seq + 1) * 2, SHAPE["vocab"])
    threads = max(1, args.threads // nproc)
    flags = pretrain_flags(args, prefix, nproc, ep, dispatcher)
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "pretrain_gpt.py"), *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), str(REPO / "pretrain_gpt.py"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(f"pretrain_gpt.py failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    ms = [float(m.group(2)) for m in _ELAPSED.finditer(out.stdout) if int(m.group(1)) > args.warmup]
    notes = [line.strip() for line in out.stdout.splitlines()
             if line.startswith(("NOTE", "> feature", "> initialized", "> host memory"))]
    return {"seconds": [m / 1000 for m in ms], "notes": notes}


def hf_config(seq: int, experts_implementation: str):
    from transformers import Qwen3MoeConfig

    s = SHAPE
    return Qwen3MoeConfig(
        hidden_size=s["hidden"], intermediate_size=s["dense_ffn"], moe_intermediate_size=s["moe_ffn"],
        num_experts=s["experts"], num_experts_per_tok=s["topk"], norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["groups"], head_dim=s["head_dim"], vocab_size=s["vocab"],
        max_position_embeddings=seq, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
        attention_dropout=0.0, output_router_logits=True, router_aux_loss_coef=AUX_COEFF,
        experts_implementation=experts_implementation)


def hf_worker(args) -> dict:
    """transformers' training step (runs in its own process: ``--hf-worker``)."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM._from_config(hf_config(args.seq, args.experts_impl),
                                             attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.iters):
        ids = torch.randint(0, SHAPE["vocab"], (args.gbs, args.seq), generator=gen)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss  # lm loss + 0.001 x load-balancing loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": times[args.warmup:], "params": params,
            "experts_impl": model.config._experts_implementation}


def run_hf(args, experts_impl: str) -> dict:
    cmd = [sys.executable, __file__, "--hf-worker", "--experts-impl", experts_impl,
           "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--gbs", str(args.gbs), "--seq", str(args.seq)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **MALLOC_ENV}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"transformers ({experts_impl}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def hf_experts_implementations() -> list[str]:
    """The experts implementations of transformers worth timing on this torch's CPU (eager always)."""
    import torch

    impls = ["eager"]
    if hasattr(torch.nn.functional, "grouped_mm") or hasattr(torch, "_grouped_mm"):
        impls.append("grouped_mm")
    return impls


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rates(args, seconds: list[float]) -> tuple[float, float]:
    """(median, best) tokens/s over the timed steps."""
    ordered = sorted(seconds)
    tokens = args.gbs * args.seq
    return tokens / ordered[len(ordered) // 2], tokens / ordered[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="threads per run (split over the processes)")
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--gbs", type=int, default=2, help="sequences per step (global batch; even)")
    p.add_argument("--rounds", type=int, default=2, help="repeat the interleaved runs; steps are pooled")
    p.add_argument("--hf-impls", nargs="*", default=None,
                   help="transformers experts implementations to run (default: all that this torch offers)")
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--experts-impl", default="eager", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_worker:
        print(json.dumps(hf_worker(args)))
        return
    if args.gbs % 2:
        p.error("--gbs must be even (the 2-process runs split it)")
    impls = args.hf_impls or hf_experts_implementations()
    t1, t2 = args.threads, max(1, args.threads // 2)
    runs = {f"transformers Qwen3MoeForCausalLM, experts {impl}, 1 process x {t1} threads":
            (lambda tmp, impl=impl: run_hf(args, impl)) for impl in impls}
    runs.update({
        f"pretrain_gpt.py, 1 process x {t1} threads (EP1)": lambda tmp: run_pretrain(args, tmp, 1, 1),
        f"pretrain_gpt.py, 2 processes x {t2} threads, EP1 (DP2)": lambda tmp: run_pretrain(args, tmp, 2, 1),
        f"pretrain_gpt.py, 2 processes x {t2} threads, EP2 alltoall":
            lambda tmp: run_pretrain(args, tmp, 2, 2),
        f"pretrain_gpt.py, 2 processes x {t2} threads, EP2 allgather":
            lambda tmp: run_pretrain(args, tmp, 2, 2, "allgather"),
    })
    seconds: dict[str, list[float]] = {}
    notes: dict[str, list[str]] = {}
    params, started = 0, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved, so that a change of load hits every run alike
            for name, run in runs.items():
                result = run(Path(tmp))
                seconds.setdefault(name, []).extend(result["seconds"])
                notes.setdefault(name, result.get("notes", []))
                params = result.get("params", params)
    import torch

    s = SHAPE
    print(f"Qwen3-MoE-shaped {params / 1e6:.1f}M parameters ({s['layers']} layers, hidden {s['hidden']}, "
          f"{s['heads']} heads / {s['groups']} KV groups of {s['head_dim']}, {s['experts']} experts of "
          f"{s['moe_ffn']}, top-{s['topk']}, vocabulary {s['vocab']}), fp32, {args.gbs} x {args.seq} tokens "
          f"per step, {args.rounds} round(s) of {args.iters - args.warmup} timed steps after {args.warmup} "
          "warm-up; "
          f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{time.time() - started:.0f} s")
    print("Both sides: fp32, AdamW (transformers: torch.optim.AdamW(fused=True); pretrain_gpt.py: "
          "megatron-core's optimizer on torch's fused Adam, ops/fused_adam.py), clip 1.0, load-balancing "
          "loss x 0.001, glibc keeps freed blocks "
          "(transformers: MALLOC_* env; pretrain_gpt.py: mallopt), OMP threads as in each row.")
    best_hf = max((n for n in runs if n.startswith("transformers")),
                  key=lambda n: _rates(args, seconds[n])[0])
    base_median, base_best = _rates(args, seconds[best_hf])
    ep1 = _rates(args, seconds[f"pretrain_gpt.py, 2 processes x {t2} threads, EP1 (DP2)"])
    print("| run | tokens/s median (best) | vs transformers' best, median (best) | vs 2-process EP1 |")
    print("|---|---|---|---|")
    for name in runs:
        median, best = _rates(args, seconds[name])
        vs_ep1 = f"{median / ep1[0]:.2f}x" if "2 processes" in name else ""
        print(f"| {name} | {median:.0f} ({best:.0f}) | {median / base_median:.2f}x "
              f"({best / base_best:.2f}x) | {vs_ep1} |")
    print(f"baseline: {best_hf}")
    for name, lines in notes.items():
        if lines:
            print(f"[{name}]")
            for line in lines:
                print(f"  {line}")


if __name__ == "__main__":
    main()
