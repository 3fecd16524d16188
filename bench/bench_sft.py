"""SFT tokens/s: padded vs packed posttrain_gpt.py --stage sft, and a transformers training loop, same model
and samples.

Data: synthetic alpaca-shaped rows (not the alpaca text, which is not on this machine): words drawn from
common English words that are one token each in Qwen2.5's tokenizer, the lengths following Stanford
Alpaca's shape (instruction ~13 words, an ``input`` on 40% of rows, answers with a long tail, median ~40
words; log-normal draws, answers capped at --max-answer words). The quick start's Qwen2.5 tokenizer
(vocabulary rebuilt offline) and ``--prompt-type qwen`` (ChatML with the default system prompt).
``preprocess_data.py --handler-name AlpacaStyleInstructionHandler`` writes it twice: unpacked
(``--seq-length S``) and ``--pack --neat-pack`` to the same S. The start of the output gives the
length statistics of the preprocessed samples.

Model: a random Qwen2.5-shaped HF model (4 layers, hidden 256, 4 heads / 2 KV groups, SwiGLU 704,
Qwen2.5's vocabulary of 151,936 rows, tied embeddings, QKV bias) saved by transformers and converted by
``convert_ckpt.py`` (hf -> mg, TP1 PP1); ``--dtype bf16`` (default) or fp32.

Runs, one process each, interleaved round by round (a load change on the shared machine hits all alike):
- **padded**: ``posttrain_gpt.py --stage sft --finetune`` on the unpacked data, every sample padded to S;
- **packed**: the same on the packed data with ``--reset-attention-mask`` (document-masked attention);
- **transformers**: as a competent user runs it (bench/peer.py): ``Qwen2ForCausalLM(attn_implementation=
  "sdpa")`` from the HF folder, ``torch.optim.AdamW(fused=True)``, clipping 1.0, the same threads, for bf16
  fp32 weights under ``torch.autocast("cpu", bfloat16)`` (the like-for-like of ``--bf16``); the unpacked
  samples (ids and labels as preprocessed: -100 on the prompt) in micro-batches of the same size,
  right-padded to the batch's longest sample (what a transformers user's collator does). It runs twice a
  round, with glibc's malloc defaults and with the environment that does what posttrain_gpt.py's
  cpu_malloc does; the ratios are against the faster of the two in each round.

Tokens/s counts real tokens (prompt + answer, no padding). Both posttrain runs process [micro-batch, S]
every step whatever the samples, so their rate is the mean real tokens per sequence (sample or pack)
x micro-batch / median step time (step times parsed from the training log, after --warmup iterations);
the transformers loop counts the real tokens of the batches it timed over their total time.

    python bench/bench_sft.py [--rounds 5] [--iters 4] [--warmup 1] [--seq 512] [--mbs 2] [--dtype bf16|fp32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_pretrain import _ELAPSED  # noqa: E402  (the training log's per-iteration times)
from bench.peer import describe, ours_describe, peer_env  # noqa: E402

SHAPE = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=151936)
WORDS = (
    "the of and to in is for that on with as was by at from it an be this are or have not but all can one "
    "time new more you your they their we which will has been other when there so some what about into "
    "also than two only first after use work year most over such way these may make could like just many "
    "how then them well should each people because good any where find part both while between through "
    "same number system data water world long day show give set point help state plan form place small "
    "large write list name word list answer question example explain describe story sentence text"
).split()
RUNS = ("padded", "packed", "transformers")
PEERS = ("transformers, malloc defaults", "transformers, malloc kept")


# ---- data and model -----------------------------------------------------------------------------------
def _words(rng, median: float, sigma: float, cap: int) -> str:
    n = int(min(cap, max(1, round(rng.lognormal(math.log(median), sigma)))))
    return " ".join(rng.choice(WORDS, n))


def write_rows(path: Path, rows: int, max_answer: int) -> None:
    """Alpaca-shaped jsonl rows (instruction, input, output)."""
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            row = {"instruction": _words(rng, 12, 0.45, 60),
                   "input": _words(rng, 12, 0.9, 120) if rng.random() < 0.4 else "",
                   "output": _words(rng, 40, 1.0, max_answer)}
            f.write(json.dumps(row) + "\n")


def _run(cmd: list, env: dict, what: str) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{what} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def prepare(args, work: Path, env: dict) -> dict:
    """Tokenizer, HF model, converted checkpoint, the two datasets; returns their paths and length stats."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoConfig, AutoModelForCausalLM

    from mindspeed_llm.quickstart.qwen_tokenizer import write_qwen25_tokenizer

    hf_dir = work / "hf"
    write_qwen25_tokenizer(hf_dir)
    config = AutoConfig.for_model(
        "qwen2",
        **SHAPE,
        max_position_embeddings=4096,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(
        hf_dir, safe_serialization=True
    )
    _run(
        [
            sys.executable,
            "convert_ckpt.py",
            "--use-mcore-models",
            "--model-type",
            "GPT",
            "--load-model-type",
            "hf",
            "--save-model-type",
            "mg",
            "--target-tensor-parallel-size",
            1,
            "--target-pipeline-parallel-size",
            1,
            "--add-qkv-bias",
            "--load-dir",
            hf_dir,
            "--save-dir",
            work / "mg",
            "--tokenizer-model",
            hf_dir / "tokenizer.json",
            "--model-type-hf",
            "llama2",
        ],
        env,
        "convert_ckpt.py",
    )
    rows = work / "alpaca_shaped.jsonl"
    write_rows(rows, args.rows, args.max_answer)
    stats = {}
    for name, extra in (("padded", []), ("packed", ["--pack", "--neat-pack"])):
        prefix = work / name / "alpaca"
        _run(
            [
                sys.executable,
                "preprocess_data.py",
                "--input",
                rows,
                "--tokenizer-name-or-path",
                hf_dir,
                "--tokenizer-type",
                "PretrainedFromHF",
                "--output-prefix",
                prefix,
                "--handler-name",
                "AlpacaStyleInstructionHandler",
                "--prompt-type",
                "qwen",
                "--seq-length",
                args.seq,
                "--workers",
                1,
                *extra,
            ],
            env,
            f"preprocess_data.py ({name})",
        )
        masks = IndexedDataset(f"{prefix}_packed_attention_mask_document")
        labels = IndexedDataset(f"{prefix}_packed_labels_document")
        real = np.array([int((masks[i] != 0).sum()) for i in range(len(masks))])
        learned = np.array([int((labels[i] != -100).sum()) for i in range(len(labels))])
        stats[name] = {"prefix": prefix, "sequences": len(masks), "real": real, "learned": learned}
    stats["hf_dir"], stats["mg_dir"] = hf_dir, work / "mg"
    return stats


# ---- the three runs -----------------------------------------------------------------------------------
def run_posttrain(args, prep: dict, packed: bool, env: dict) -> list[float]:
    """posttrain_gpt.py --stage sft: seconds per timed iteration."""
    s = SHAPE
    cmd = [
        sys.executable,
        "posttrain_gpt.py",
        "--stage",
        "sft",
        "--finetune",
        "--load",
        prep["mg_dir"],
        "--prompt-type",
        "qwen",
        "--data-path",
        prep["packed" if packed else "padded"]["prefix"],
        "--split",
        "100,0,0",
        "--tokenizer-type",
        "PretrainedFromHF",
        "--tokenizer-name-or-path",
        prep["hf_dir"],
        "--num-layers",
        s["num_hidden_layers"],
        "--hidden-size",
        s["hidden_size"],
        "--ffn-hidden-size",
        s["intermediate_size"],
        "--num-attention-heads",
        s["num_attention_heads"],
        "--group-query-attention",
        "--num-query-groups",
        s["num_key_value_heads"],
        "--seq-length",
        args.seq,
        "--max-position-embeddings",
        4096,
        "--micro-batch-size",
        args.mbs,
        "--global-batch-size",
        args.mbs,
        "--train-iters",
        args.iters,
        "--lr",
        "1e-5",
        "--min-lr",
        "1e-6",
        "--lr-decay-style",
        "cosine",
        "--weight-decay",
        "0.0",
        "--clip-grad",
        "1.0",
        "--adam-beta1",
        "0.9",
        "--adam-beta2",
        "0.999",
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
        "--make-vocab-size-divisible-by",
        1,
        "--padded-vocab-size",
        s["vocab_size"],
        "--log-interval",
        1,
        "--eval-iters",
        0,
        "--num-workers",
        0,
        "--use-flash-attn",
        "--use-fused-rmsnorm",
        "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
    ]
    if packed:
        cmd.append("--reset-attention-mask")
    if args.dtype == "bf16":
        cmd.append("--bf16")
    log = _run(cmd, env, "posttrain_gpt.py")
    return [float(m.group(2)) / 1000 for m in _ELAPSED.finditer(log) if int(m.group(1)) > args.warmup]


def hf_worker(args) -> dict:
    """The transformers loop (own process): real tokens and seconds of the timed steps."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import Qwen2ForCausalLM

    from bench.peer import peer_adamw, peer_autocast

    torch.set_num_threads(args.threads)
    model = Qwen2ForCausalLM.from_pretrained(args.hf_dir, attn_implementation="sdpa",
                                             dtype=torch.float32).train()
    opt = peer_adamw(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids_ds = IndexedDataset(f"{args.prefix}_packed_input_ids_document")
    labels_ds = IndexedDataset(f"{args.prefix}_packed_labels_document")
    order = np.random.default_rng(1234).permutation(len(ids_ds))
    pad = 151643  # <|endoftext|>, Qwen2.5's pad token
    tokens, seconds = 0, 0.0
    for step in range(args.iters):
        picked = order[step * args.mbs:(step + 1) * args.mbs]
        rows = [torch.from_numpy(ids_ds[int(i)].astype(np.int64)) for i in picked]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), pad)
        labels = torch.full((len(rows), longest), -100)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for b, i in enumerate(picked):
            n = len(rows[b])
            ids[b, :n], labels[b, :n], mask[b, :n] = (
                rows[b],
                torch.from_numpy(labels_ds[int(i)].astype(np.int64)),
                1,
            )
        t0 = time.perf_counter()
        with peer_autocast(args.dtype):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            seconds += time.perf_counter() - t0
            tokens += int(mask.sum())
    return {"tokens": tokens, "seconds": seconds}


def run_hf(args, prep: dict, env: dict, malloc: bool) -> float:
    """The transformers loop in its own process: real tokens/s."""
    out = _run(
        [
            sys.executable,
            __file__,
            "--hf-worker",
            "--hf-dir",
            prep["hf_dir"],
            "--prefix",
            prep["padded"]["prefix"],
            "--threads",
            args.threads,
            "--iters",
            args.iters,
            "--warmup",
            args.warmup,
            "--mbs",
            args.mbs,
            "--dtype",
            args.dtype,
        ],
        peer_env(env, args.threads, malloc),
        "transformers loop",
    )
    result = json.loads(out.strip().splitlines()[-1])
    return result["tokens"] / result["seconds"]


# ---- report -------------------------------------------------------------------------------------------
def describe_data(args, prep: dict) -> None:
    import numpy as np

    real, learned = prep["padded"]["real"], prep["padded"]["learned"]
    packs = prep["packed"]["real"]
    print(
        f"data: {len(real)} alpaca-shaped samples, tokens per sample mean {real.mean():.0f}, median "
        f"{np.median(real):.0f}, p90 {np.percentile(real, 90):.0f}, max {real.max()} (learned: mean "
        f"{learned.mean():.0f}); padded to --seq-length {args.seq}: {100 * real.mean() / args.seq:.0f}% real "
        f"tokens; --pack --neat-pack: {len(packs)} packs, {len(real) / len(packs):.1f} samples and "
        f"{100 * packs.mean() / args.seq:.0f}% real tokens per pack"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (padded, packed, transformers)")
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seq", type=int, default=512, help="--seq-length of both datasets and runs")
    p.add_argument("--mbs", type=int, default=2, help="micro-batch (= global batch) of every run")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=400, help="synthetic alpaca-shaped rows")
    p.add_argument("--max-answer", type=int, default=300, help="longest answer in words")
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_worker:
        print(json.dumps(hf_worker(args)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(args, Path(tmp), env)
        describe_data(args, prep)
        sys.stdout.flush()
        per_seq = {name: prep[name]["real"].mean() * args.mbs for name in ("padded", "packed")}
        rates: dict[str, list[float]] = {name: [] for name in RUNS + PEERS}
        loads = []
        for _ in range(args.rounds):  # interleaved: a load change hits the four runs alike
            for name in ("padded", "packed"):
                step = statistics.median(run_posttrain(args, prep, name == "packed", env))
                print(f"round {len(rates[name]) + 1}, {name}: median {step:.2f} s/step", flush=True)
                rates[name].append(per_seq[name] / step)
                loads.append(os.getloadavg()[0])
            for name, malloc in zip(PEERS, (False, True)):
                rates[name].append(run_hf(args, prep, env, malloc))
                loads.append(os.getloadavg()[0])
            rates["transformers"].append(max(rates[name][-1] for name in PEERS))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the runs, {args.threads} threads; "
        f"Qwen2.5-shaped {SHAPE['num_hidden_layers']} layers hidden "
        f"{SHAPE['hidden_size']} vocab {SHAPE['vocab_size']}, {args.dtype}, seq {args.seq}, micro-batch "
        f"{args.mbs}, {args.rounds} round(s) of {args.iters - args.warmup} timed iterations after "
        f"{args.warmup}"
    )
    print(ours_describe(args.dtype, args.threads))
    print(describe(args.dtype, args.threads))
    print("transformers tokens/s per round, malloc defaults / kept: " + ", ".join(
        f"{a:.0f} / {b:.0f}" for a, b in zip(*(rates[name] for name in PEERS))))
    print(
        "\n| round | padded tokens/s | packed tokens/s | transformers (faster) tokens/s | packed / padded "
        "| packed / transformers | padded / transformers |\n|---|---|---|---|---|---|---|"
    )
    ratios = {"pp": [], "pt": [], "dt": []}
    for r in range(args.rounds):
        a, b, c = (rates[name][r] for name in RUNS)
        ratios["pp"].append(b / a)
        ratios["pt"].append(b / c)
        ratios["dt"].append(a / c)
        print(f"| {r + 1} | {a:.0f} | {b:.0f} | {c:.0f} | {b / a:.2f}x | {b / c:.2f}x | {a / c:.2f}x |")
    med = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"| median | {statistics.median(rates['padded']):.0f} | {statistics.median(rates['packed']):.0f} | "
          f"{statistics.median(rates['transformers']):.0f} | **{med['pp']:.2f}x** | **{med['pt']:.2f}x** | "
          f"{med['dt']:.2f}x |")
    print(f"\ngoals: packed >= 1.5x padded: {'met' if med['pp'] >= 1.5 else 'NOT met'} ({med['pp']:.2f}x); "
          f"packed >= 1.8x transformers at its best: {'met' if med['pt'] >= 1.8 else 'NOT met'} "
          f"({med['pt']:.2f}x)")


if __name__ == "__main__":
    main()
