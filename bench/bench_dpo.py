"""DPO step time: posttrain_gpt.py --stage dpo against TRL's DPOTrainer (trl 1.16): same model, pairs, step.

Model: a random Qwen2-shaped HF model (--layers, hidden 256, 4 heads / 2 KV groups, SwiGLU 704, vocabulary
--vocab, untied, QKV bias) saved by transformers and converted by convert_ckpt.py (hf -> mg, TP1 PP1).
Pairs: random token ids (prompt, chosen, rejected lengths drawn from --prompt / --answer ranges), written as
the four pairwise datasets for ours and, one word per token (a word-level tokenizer), as TRL's text rows.

Both sides, one process, --threads threads, the same dtype (--dtype, fp32 by default: bf16 matmuls are
emulated on CPUs without AVX512-BF16), micro-batch --mbs pairs, --gbs pairs per step, the reference model a
frozen copy of the starting weights run in the step, sigmoid loss, AdamW with torch's fused kernel (ours:
megatron's optimizer with the project's fused-Adam patch; TRL: ``optim="adamw_torch_fused"``), no clipping,
each micro-batch padded to its longest sequence (ours --no-pad-to-seq-lengths; TRL's collator). TRL runs with
its defaults otherwise (eager Trainer loop, SDPA attention), fp32 weights (with --dtype bf16 the Trainer's
autocast: the like-for-like of --bf16), once with glibc's malloc defaults and once keeping freed blocks as
our side does (bench/peer.py); the ratio is against the faster. Step times: ours from the log, TRL's from
a TrainerCallback (step begin -> end); the median after --warmup steps.

Also measured: the same run with LoRA (r 8 on every linear layer; one model copy: the reference is the base
with the adapters off) and each run's peak RSS (ours: the training log's max rss; TRL: getrusage).

    python bench/bench_dpo.py [--iters 6] [--warmup 2] [--layers 4] [--vocab 32000] [--mbs 2] [--gbs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.peer import describe, ours_describe, peer_env  # noqa: E402

_ELAPSED = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+)")


def make_pairs(args) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(args.gbs * args.iters):
        p, c, r = (
            int(rng.integers(*args.prompt)),
            int(rng.integers(*args.answer)),
            int(rng.integers(*args.answer)),
        )
        pairs.append(
            {
                k: rng.integers(3, args.vocab, n).tolist()
                for k, n in (("prompt_ids", p), ("chosen_ids", c), ("rejected_ids", r))
            }
        )
    return pairs


def prepare(args, work: Path) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.dpo.helpers import write_pairwise_data
    from tests.helpers.tiny import convert_hf_to_mg, save_word_tokenizer

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=args.vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.02,
    )
    hf = work / "hf"
    Qwen2ForCausalLM(cfg).save_pretrained(str(hf))
    save_word_tokenizer(work / "tok", args.vocab)
    mg = convert_hf_to_mg(hf, work / "mg", 1, 1)
    pairs = make_pairs(args)
    data = write_pairwise_data(work / "data" / "pairs", pairs)
    (work / "pairs.json").write_text(json.dumps(pairs))
    return {"hf": hf, "mg": mg, "data": data, "tok": work / "tok"}


_MAX_RSS = re.compile(r"max rss: ([0-9.]+)")


def run_ours(args, prep: dict, env: dict, lora: bool = False) -> tuple[list[float], float]:
    from tests.e2e.pretrain_helpers import model_flags

    longest = max(
        len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"]))
        for p in json.loads((Path(prep["data"]).parent.parent / "pairs.json").read_text())
    )
    seq = -(-longest // 64) * 64
    flags = [
        *model_flags(prep["hf"]),
        "--stage",
        "dpo",
        "--is-pairwise-dataset",
        "--prompt-type",
        "qwen",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        str(args.vocab - 1),
        "--data-path",
        prep["data"],
        "--split",
        "100,0,0",
        "--seq-length",
        str(seq),
        "--no-pad-to-seq-lengths",
        "--pad-to-multiple-of",
        "8",
        "--micro-batch-size",
        str(args.mbs),
        "--global-batch-size",
        str(args.gbs),
        "--train-iters",
        str(args.iters),
        "--lr",
        "1e-6",
        "--min-lr",
        "1e-6",
        "--lr-warmup-iters",
        "0",
        "--weight-decay",
        "0",
        "--clip-grad",
        "0",
        "--log-interval",
        "1",
        "--eval-iters",
        "0",
        "--num-workers",
        "0",
        "--load",
        str(prep["mg"]),
        "--finetune",
    ] + (["--bf16"] if args.dtype == "bf16" else [])
    if lora:  # the reference is the base with the adapters off: no second copy
        flags += [
            "--lora-target-modules",
            "linear_qkv",
            "linear_proj",
            "linear_fc1",
            "linear_fc2",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
        ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-port",
        str(29500 + os.getpid() % 1000),
        str(REPO / "posttrain_gpt.py"),
        *map(str, flags),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"posttrain_gpt.py failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    times = [float(m.group(2)) / 1000 for m in _ELAPSED.finditer(out.stdout) if int(m.group(1)) > args.warmup]
    rss = [float(m.group(1)) for m in _MAX_RSS.finditer(out.stdout)]
    return times, max(rss) if rss else float("nan")


def trl_worker(args) -> None:
    """TRL's DPOTrainer on the same pairs (run in a process of its own); prints the step times as JSON."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    pairs = json.loads((work / "pairs.json").read_text())

    def text(ids):
        return " ".join(f"w{i}" for i in ids)

    rows = [
        {
            "prompt": text(p["prompt_ids"]),
            "chosen": text(p["chosen_ids"]),
            "rejected": text(p["rejected_ids"]),
        }
        for p in pairs
    ]
    # fp32 weights; with --dtype bf16 the Trainer's bf16=True autocasts the compute to bf16 on the CPU: the
    # like-for-like of --bf16 (bench/peer.py), not a model cast to bf16.
    model = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32, attn_implementation="sdpa")
    ref = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(work / "tok")
    tok.pad_token = tok.eos_token
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.t0)

    cfg = DPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.mbs,
        gradient_accumulation_steps=args.gbs // args.mbs,
        max_steps=args.iters,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        optim="adamw_torch_fused",
        use_cpu=True,
        bf16=args.dtype == "bf16",
        report_to=[],
        logging_steps=1000,
        save_strategy="no",
        dataloader_num_workers=0,
        max_length=None,
        loss_type=["sigmoid"],
        beta=0.1,
        seed=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[Clock()],
    )
    trainer.train()
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times[args.warmup :], "max_rss_mb": peak}))


def run_trl(args, work: Path, env: dict) -> list[float]:
    cmd = [
        sys.executable,
        __file__,
        "--trl-worker",
        "--work",
        str(work),
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--mbs",
        str(args.mbs),
        "--gbs",
        str(args.gbs),
        "--dtype",
        args.dtype,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"TRL worker failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["times"], result["max_rss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--mbs", type=int, default=2)
    p.add_argument("--gbs", type=int, default=4)
    p.add_argument("--prompt", type=int, nargs=2, default=(32, 128))
    p.add_argument("--answer", type=int, nargs=2, default=(32, 192))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_worker:
        trl_worker(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        prep = prepare(args, work)
        ours, ours_rss = run_ours(args, prep, env)
        lora, lora_rss = run_ours(args, prep, env, lora=True)
        # TRL with glibc's malloc defaults and with freed blocks kept (bench/peer.py): the faster counts.
        trl_runs = {kept: run_trl(args, work, peer_env(env, args.threads, kept)) for kept in (False, True)}
    malloc = min(trl_runs, key=lambda m: statistics.median(trl_runs[m][0]))
    trl, trl_rss = trl_runs[malloc]
    o, t, lo = statistics.median(ours), statistics.median(trl), statistics.median(lora)
    print(
        f"# DPO step, {platform.processor() or platform.machine()}, {args.threads} threads, {args.dtype}, "
        f"Qwen2-shaped {args.layers} layers hidden 256 vocab {args.vocab}, {args.gbs} pairs/step "
        f"(micro-batch {args.mbs}), prompt {args.prompt[0]}-{args.prompt[1]} answers {args.answer[0]}-"
        f"{args.answer[1]} tokens; median of {len(ours)} / {len(trl)} steps after {args.warmup} warm-up"
    )
    print(f"# {ours_describe(args.dtype, args.threads)}")
    print(f"# {describe(args.dtype, args.threads)}")
    print("| side | step (s) | pairs/s | max RSS (MB) |")
    print("|---|---|---|---|")
    print(
        f"| posttrain_gpt.py --stage dpo (megatron-core, fused AdamW) | {o:.3f} | {args.gbs / o:.2f} | "
        f"{ours_rss:.0f} |"
    )
    for kept, (times, rss) in trl_runs.items():
        step = statistics.median(times)
        print(
            f"| TRL DPOTrainer (transformers SDPA, adamw_torch_fused, malloc "
            f"{'kept' if kept else 'glibc defaults'}) | {step:.3f} | {args.gbs / step:.2f} | {rss:.0f} |"
        )
    print(
        f"| posttrain_gpt.py --stage dpo, LoRA r 8 (reference: adapters off) | {lo:.3f} | "
        f"{args.gbs / lo:.2f} | {lora_rss:.0f} |"
    )
    print(f"ours / TRL step time: {o / t:.2f} (TRL's faster allocator setting: "
          f"{'kept' if malloc else 'glibc defaults'})")


if __name__ == "__main__":
    main()
