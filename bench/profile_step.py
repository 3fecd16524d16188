"""Where a training step's time goes: torch.profiler over one step of pretrain_gpt.py or of the peer loop.

The bench model and flags of bench/bench_pretrain.py (or its LoRA variant, ``--lora``; or, with
``--lora-bench``, bench/bench_lora.py's 100M tied model, micro-batch 1, against peft). One process;
after ``--warmup`` steps one step runs under ``torch.profiler`` (CPU activities) and the ops' self CPU
times are summed into categories (matmuls, attention, the loss over the vocabulary, norms, RoPE,
SwiGLU/activation, the optimizer, copies and dtype conversions, the rest), then the top ops are listed.

    python bench/profile_step.py --side ours|hf [--dtype fp32|bf16] [--mbs 2] [--seq 512] [--lora]
                                 [--lora-bench] [--extra "more pretrain_gpt.py flags"]
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CATEGORIES = (  # first match wins; matched against the op name
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "attention")),
    ("loss over the vocabulary", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp", "_softmax",
                                  "amax", "exp")),
    ("optimizer", ("adam", "_foreach", "clip_grad", "norm", "lerp")),
    ("copies / dtype conversions", ("copy_", "aten::to", "_to_copy", "contiguous", "clone", "cat",
                                    "fill_", "zero_", "empty")),
    ("elementwise (RoPE, SwiGLU, RMSNorm, residuals)", ("mul", "add", "silu", "rsqrt", "pow", "mean",
                                                         "sub", "div", "neg", "sigmoid", "sum")),
)


def categorize(rows: list[tuple[str, float]]) -> dict[str, float]:
    """Self CPU seconds per category."""
    out: dict[str, float] = {}
    for name, seconds in rows:
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        out[cat] = out.get(cat, 0.0) + seconds
    return out


def report(prof, wall: float, top: int) -> None:
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "::" in e.key]
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in events]
    total = sum(s for _, s in rows)
    print(f"step wall {wall:.3f} s; profiled self CPU time {total:.3f} s (ops' time, summed over threads)")
    print("| category | self CPU s | share |\n|---|---|---|")
    for cat, s in sorted(categorize(rows).items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {s:.3f} | {100 * s / total:.1f}% |")
    print(f"\ntop {top} ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))


def profiled(step, warmup: int, top: int):
    """A wrapper of ``step`` that profiles call number ``warmup + 1`` and reports it."""
    import torch

    calls = [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] != warmup + 1:
            return step(*a, **k)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            out = step(*a, **k)
            wall = time.perf_counter() - t0
        report(prof, wall, top)
        return out

    return wrapper


def run_ours(args) -> None:
    from bench import bench_pretrain

    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "bench_text_document"
        bench_pretrain.make_data(prefix, (args.warmup + 4) * args.mbs * args.seq * 2)
        ns = argparse.Namespace(seq=args.seq, mbs=args.mbs, iters=args.warmup + 2, extra=args.extra,
                                dtype=args.dtype)
        if args.lora_bench:
            from bench import bench_lora

            flags = bench_lora.ours_flags(ns, prefix)
        else:
            flags = bench_pretrain.pretrain_flags(ns, args.dtype, prefix)
        if args.lora and not args.lora_bench:
            flags += ["--lora-r", "16", "--lora-alpha", "32", "--lora-target-modules", "linear_qkv",
                      "linear_proj", "linear_fc1", "linear_fc2"]
        sys.argv = [str(REPO / "pretrain_gpt.py"), *flags]
        import mindspeed_llm.training.training as training

        training.train_step = profiled(training.train_step, args.warmup, args.top)
        runpy.run_path(str(REPO / "pretrain_gpt.py"), run_name="__main__")


def run_hf(args) -> None:
    import torch

    from bench.bench_pretrain import SHAPE, peer_model
    from bench.peer import peer_adamw, peer_autocast

    if args.lora_bench:
        from transformers import Qwen2ForCausalLM

        from bench.bench_lora import hf_config

        torch.manual_seed(0)
        model = Qwen2ForCausalLM._from_config(hf_config(), attn_implementation="sdpa").float().train()
    else:
        model = peer_model(args.seq)
    if args.lora or args.lora_bench:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = peer_adamw(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(ids):
        with peer_autocast(args.dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = profiled(step, args.warmup, args.top)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.warmup + 1):
        step(torch.randint(0, SHAPE["vocab"], (args.mbs, args.seq), generator=gen))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=["ours", "hf"], required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--mbs", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--lora", action="store_true", help="LoRA r=16 on every decoder linear (peft for hf)")
    p.add_argument("--lora-bench", action="store_true",
                   help="bench/bench_lora.py's model and LoRA flags (use with --mbs 1)")
    p.add_argument("--extra", default="", help="more pretrain_gpt.py flags")
    args = p.parse_args()
    (run_ours if args.side == "ours" else run_hf)(args)


if __name__ == "__main__":
    main()
