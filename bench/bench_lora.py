"""LoRA: gradient + optimizer-state memory vs full fine-tuning, and step time vs peft on transformers.

The model is Qwen2-shaped and ~100M parameters (12 layers, hidden 768, 12 heads / 4 KV groups, SwiGLU
2048, vocabulary 32000, tied embeddings, QKV bias), fp32, on the CPU. LoRA: r=16, alpha=32 on every
linear layer of the decoder (megatron's linear_qkv linear_proj linear_fc1 linear_fc2 = peft's q/k/v/o/
gate/up/down_proj).

    python bench/bench_lora.py [--threads 2] [--iters 8] [--warmup 2] [--seq 512] [--dtype fp32|bf16]
                               [--rounds 1] [--skip-time] [--skip-memory]

Memory (one process, megatron-core DDP and optimizer built as pretrain_gpt.py builds them, after one
step so Adam's state exists): the bytes of DDP's gradient buffers and of the optimizer's state tensors,
full fine-tuning vs LoRA.

Step time: pretrain_gpt.py with the LoRA flags (and --use-flash-attn --use-fused-*) vs peft as a
competent user runs it (bench/peer.py): ``get_peft_model`` on ``Qwen2ForCausalLM(attn_implementation=
"sdpa")``, ``torch.optim.AdamW(fused=True)`` over the adapter (the same optimizer kernel as ours),
gradient clipping 1.0, the same threads, micro-batch 1, same sequence length, both reading the token
stream of the same dataset file; each in its own process, first iterations warm-up. peft runs twice:
with glibc's malloc defaults and with the environment that does what pretrain_gpt.py's cpu_malloc does;
the ratio is against the faster. ``--rounds N`` repeats the three runs interleaved (ours, peft, peft with
the malloc settings, ours, ...) and pools the timed iterations, so that load from other processes falls
on every side alike; each round's ratios are printed. ``--dtype bf16``: pretrain_gpt.py ``--bf16``
(bf16 compute, fp32 main weights) against peft on the fp32 model under ``torch.autocast("cpu",
bfloat16)`` (bf16 compute, fp32 weights and optimizer).
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

SHAPE = dict(layers=12, hidden=768, heads=12, groups=4, ffn=2048, vocab=32000)
R, ALPHA = 16, 32
TARGETS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_ELAPSED = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+)")


def hf_config():
    """The benchmark model as transformers' Qwen2Config."""
    from transformers import Qwen2Config

    s = SHAPE
    return Qwen2Config(
        hidden_size=s["hidden"],
        intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["groups"],
        vocab_size=s["vocab"],
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
    )


# ---- memory -------------------------------------------------------------------------------------------
def memory_worker(lora: bool, seq: int) -> dict:
    """Gradient-buffer and optimizer-state bytes of megatron DDP + optimizer, after one step."""
    import torch
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from mindspeed_llm.lora import LoraConfig, apply_lora
    from mindspeed_llm.models import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig
    from tests.ops.megatron_env import single_process_model_parallel

    with single_process_model_parallel():
        cfg = ModelConfig.from_hf_config(hf_config().to_dict()).replace(params_dtype=torch.float32)
        model = build_gpt_model(cfg, padded_vocab_size=cfg.vocab_size, pre_process=True, post_process=True)
        params = sum(p.numel() for p in model.parameters())
        if lora:
            apply_lora(model, LoraConfig(r=R, alpha=ALPHA, target_modules=tuple(TARGETS)))
        ddp = DistributedDataParallel(
            config=model.config, ddp_config=DistributedDataParallelConfig(), module=model
        )
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4, clip_grad=1.0), [ddp])
        ids = torch.randint(0, SHAPE["vocab"], (1, seq))
        loss = ddp(ids, torch.arange(seq)[None], None, labels=ids).float().mean()
        loss.backward()
        ddp.finish_grad_sync()
        opt.step()
        grad_bytes = sum(b.grad_data.numel() * b.grad_data.element_size() for b in ddp.buffers)
        state_bytes = sum(t.numel() * t.element_size() for o in getattr(opt, "chained_optimizers", [opt])
                          for st in o.optimizer.state.values() for t in st.values() if torch.is_tensor(t))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": params, "trainable": trainable, "grad_bytes": grad_bytes, "state_bytes": state_bytes}


# ---- step time ----------------------------------------------------------------------------------------
def make_data(prefix: Path, tokens: int) -> None:
    """An indexed dataset of random documents (what both sides read): bench_pretrain's, at this vocabulary."""
    sys.path.insert(0, str(REPO))
    from bench.bench_pretrain import make_data as random_documents

    random_documents(prefix, tokens, vocab=SHAPE["vocab"])


def ours_flags(args, prefix: Path) -> list[str]:
    """pretrain_gpt.py's command line (after the script) for the bench model with LoRA."""
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
        4096,
        "--micro-batch-size",
        1,
        "--global-batch-size",
        1,
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
        "--use-flash-attn",
        "--use-fused-rmsnorm",
        "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
        "--lora-r",
        R,
        "--lora-alpha",
        ALPHA,
        "--lora-target-modules",
        *TARGETS,
    ]
    if args.dtype == "bf16":
        cmd.append("--bf16")
    return [str(c) for c in cmd + getattr(args, "extra", "").split()]


def run_ours(args, prefix: Path) -> list[float]:
    """pretrain_gpt.py with LoRA: seconds per timed iteration."""
    cmd = [sys.executable, str(REPO / "pretrain_gpt.py"), *ours_flags(args, prefix)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(f"pretrain_gpt.py failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return [float(m.group(2)) / 1000 for m in _ELAPSED.finditer(out.stdout) if int(m.group(1)) > args.warmup]


def peft_worker(args) -> list[float]:
    """The peft loop (own process): seconds per timed iteration."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    from bench.peer import peer_adamw, peer_autocast

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(hf_config(), attn_implementation="sdpa").float()
    model = get_peft_model(
        model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=PEFT_TARGETS)
    )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = peer_adamw(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    stream = np.memmap(f"{args.prefix}.bin", dtype=np.uint16, mode="r")
    times = []
    for i in range(args.iters):
        ids = torch.from_numpy(stream[i * args.seq:(i + 1) * args.seq].astype(np.int64))[None]
        t0 = time.perf_counter()
        with peer_autocast(args.dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[args.warmup:]


def run_peft(args, prefix: Path, malloc: bool) -> list[float]:
    cmd = [
        sys.executable,
        __file__,
        "--peft-worker",
        "--prefix",
        str(prefix),
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--seq",
        str(args.seq),
        "--dtype",
        args.dtype,
    ]
    env = peer_env({**os.environ, "PYTHONPATH": str(REPO)}, args.threads, malloc)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"peft loop failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_memory(args, env: dict) -> None:
    """Gradient + optimizer-state memory, full vs LoRA (two fresh processes)."""
    mem = {}
    for kind in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-worker", kind],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"memory worker failed:\n{out.stderr[-3000:]}")
        mem[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads "
        f"{args.threads}; model {mem['full']['params'] / 1e6:.1f}M parameters, fp32; LoRA r={R} "
        f"alpha={ALPHA} on {' '.join(TARGETS)}"
    )
    print(
        "\n| | trainable params | gradient buffers (MiB) | optimizer state (MiB) | sum (MiB) "
        "|\n|---|---|---|---|---|"
    )
    for kind in ("full", "lora"):
        m = mem[kind]
        total = m["grad_bytes"] + m["state_bytes"]
        print(
            f"| {kind} | {m['trainable']:,} | {m['grad_bytes'] / 2**20:.1f} | {m['state_bytes'] / 2**20:.1f} "
            f"| {total / 2**20:.1f} |"
        )
    full = mem["full"]["grad_bytes"] + mem["full"]["state_bytes"]
    lora = mem["lora"]["grad_bytes"] + mem["lora"]["state_bytes"]
    print(f"\nLoRA / full (gradients + optimizer state): {100 * lora / full:.2f}%")


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="step-time runs (memory: fp32)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the step-time runs")
    p.add_argument("--extra", default="",
                   help="more pretrain_gpt.py flags: our side also runs with them (interleaved, own row)")
    p.add_argument("--skip-time", action="store_true", help="only the memory table")
    p.add_argument("--skip-memory", action="store_true", help="only the step times")
    p.add_argument("--peft-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peft_worker:
        print(json.dumps(peft_worker(args)))
        return
    if args.memory_worker:
        import mindspeed_llm  # noqa: F401  (CPU device layer)

        print(json.dumps(memory_worker(args.memory_worker == "lora", 128)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    if not args.skip_memory:
        print_memory(args, env)
    if args.skip_time:
        return
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "bench_text_document"
        make_data(prefix, (args.iters + 4) * args.seq * 2)
        ours, extra, plain, kept, loads = [], [], [], [], []
        for r in range(args.rounds):
            o = run_ours(argparse.Namespace(**{**vars(args), "extra": ""}), prefix)
            loads.append(os.getloadavg()[0])
            if args.extra:
                extra += run_ours(args, prefix)
                loads.append(os.getloadavg()[0])
            p_ = run_peft(args, prefix, malloc=False)
            loads.append(os.getloadavg()[0])
            k = run_peft(args, prefix, malloc=True)
            loads.append(os.getloadavg()[0])
            print(
                f"round {r + 1}: s/step ours {_median(o):.3f}, peft {_median(p_):.3f}, peft malloc kept "
                f"{_median(k):.3f} (ours vs faster peft {min(_median(p_), _median(k)) / _median(o):.2f}x)"
                + (f"; with {args.extra}: {_median(extra[-len(o):]):.3f}" if args.extra else ""),
                flush=True,
            )
            ours, plain, kept = ours + o, plain + p_, kept + k
    print(
        f"\nstep time, {args.dtype}, seq {args.seq}, micro-batch 1, median of {len(ours)} timed iterations "
        f"(after {args.warmup}); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"average {min(loads):.1f}-{max(loads):.1f} during the runs"
    )
    print(ours_describe(args.dtype, args.threads))
    print(describe(args.dtype, args.threads) + "; peft r=16 alpha=32 on the same seven projections")
    print("\n| | s/step | tokens/s | ours vs it |\n|---|---|---|---|")
    rows = [("pretrain_gpt.py --lora-*", ours)] + ([(f"pretrain_gpt.py --lora-* {args.extra}", extra)]
                                                  if args.extra else [])
    for name, xs in (
        *rows,
        ("peft + transformers, fused AdamW", plain),
        ("peft + transformers, fused AdamW, malloc kept", kept),
    ):
        print(
            f"| {name} | {_median(xs):.3f} | {args.seq / _median(xs):.0f} | "
            f"{_median(xs) / _median(ours):.2f}x |"
        )
    best = min(_median(plain), _median(kept))
    for name, xs in rows:
        print(f"| **{name} vs peft at its best** | | | **{best / _median(xs):.2f}x** |")


if __name__ == "__main__":
    main()
