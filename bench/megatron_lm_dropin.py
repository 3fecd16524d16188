"""Megatron-LM's own pretrain_gpt.py with ``import mindspeed_llm`` vs ours: same checkpoint, data, flags.

    python bench/megatron_lm_dropin.py --megatron-lm PATH_TO_MEGATRON_LM_CLONE [--iters 10]
                                       [--layouts tp1pp2,tp2pp1] [--workdir DIR] [--nproc 2]

Needs a Megatron-LM clone (tested: tag core_v0.16.1) and ``pip install -e .[megatron-lm]`` (``six``,
which its tokenizer package imports). The clone's ``megatron/core`` is *not* used: an overlay folder
puts its ``megatron/training``, ``megatron/legacy``, ``megatron/post_training`` and ``megatron/rl``
next to the installed PyPI megatron-core (``megatron`` is a namespace package), with a copy of its
``pretrain_gpt.py`` whose only change is ``import mindspeed_llm`` as the first line (plus its
``gpt_builders.py`` and ``model_provider.py``, unchanged).

One random Qwen2-shaped HF model (4 layers, hidden 128, GQA 4/2, SwiGLU 352, vocabulary 1024,
untied, QKV bias, fp32) is converted by convert_ckpt.py to each layout; one random indexed dataset;
both trainers load the converted weights with ``--finetune`` and run the same flags in fp32 under
torchrun on this machine's device. Prints, per layout, the lm loss and grad norm of every iteration
side by side, and the median time per iteration after the first two.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(layers=4, hidden=128, heads=4, groups=2, ffn=352, vocab=1024, seq=128)
OVERLAY_PACKAGES = ("training", "legacy", "post_training", "rl")
OVERLAY_FILES = ("gpt_builders.py", "model_provider.py")
_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)"
                   r".*?lm loss: ([0-9.E+-]+) \|.*?grad norm: ([0-9.]+)")


def make_overlay(megatron_lm: Path, target: Path) -> Path:
    """Megatron-LM's training packages beside the installed megatron-core, and its pretrain_gpt.py +
    import."""
    if (
        not (megatron_lm / "megatron" / "training").is_dir()
        or not (megatron_lm / "pretrain_gpt.py").is_file()
    ):
        sys.exit(
            f"error: --megatron-lm {megatron_lm}: no megatron/training or pretrain_gpt.py there; pass the "
            "root of a Megatron-LM clone (git clone https://github.com/NVIDIA/Megatron-LM -b core_v0.16.1)"
        )
    (target / "megatron").mkdir(parents=True, exist_ok=True)
    for name in OVERLAY_PACKAGES:
        if (megatron_lm / "megatron" / name).is_dir() and not (target / "megatron" / name).exists():
            (target / "megatron" / name).symlink_to(megatron_lm / "megatron" / name)
    for name in OVERLAY_FILES:
        shutil.copy(megatron_lm / name, target / name)
    script = target / "pretrain_gpt.py"
    script.write_text("import mindspeed_llm\n" + (megatron_lm / "pretrain_gpt.py").read_text())
    return script


def make_model_and_data(work: Path) -> tuple[Path, str]:
    """A random HF Qwen2 folder and a random indexed dataset (EOD = vocabulary - 1, as NullTokenizer has
    it)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = SHAPE
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
                             num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                             num_key_value_heads=s["groups"], max_position_embeddings=4 * s["seq"],
                             rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
        Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(hf)
    prefix = work / "data" / "corpus_text_document"
    if not Path(f"{prefix}.idx").is_file():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
        for _ in range(2000):
            body = rng.integers(0, s["vocab"] - 1, int(rng.integers(32, 400)))
            ids = np.append(body, s["vocab"] - 1).astype(np.int64)
            builder.add_document(torch.from_numpy(ids), [len(ids)])
        builder.finalize(f"{prefix}.idx")
    return hf, str(prefix)


def convert(hf: Path, target: Path, tp: int, pp: int) -> Path:
    """convert_ckpt.py hf -> mg at TP/PP."""
    if not (target / "latest_checkpointed_iteration.txt").is_file():
        subprocess.run([sys.executable, str(REPO / "convert_ckpt.py"), "--load-model-type", "hf",
                        "--save-model-type", "mg", "--load-dir", str(hf), "--save-dir", str(target),
                        "--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp),
                        "--add-qkv-bias"], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return target


def flags(data: str, load: Path, tp: int, pp: int, iters: int) -> list[str]:
    """One set of flags, in spellings both parsers accept (fp32, no dropout)."""
    s = SHAPE
    return [
        str(f)
        for f in [
            "--use-mcore-models",
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
            "--max-position-embeddings",
            4 * s["seq"],
            "--position-embedding-type",
            "rope",
            "--rotary-base",
            1000000,
            "--normalization",
            "RMSNorm",
            "--norm-epsilon",
            "1e-6",
            "--swiglu",
            "--disable-bias-linear",
            "--add-qkv-bias",
            "--untie-embeddings-and-output-weights",
            "--attention-dropout",
            0.0,
            "--hidden-dropout",
            0.0,
            "--make-vocab-size-divisible-by",
            1,
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            s["vocab"] - 1,
            "--data-path",
            data,
            "--split",
            "100,0,0",
            "--seq-length",
            s["seq"],
            "--micro-batch-size",
            2,
            "--global-batch-size",
            8,
            "--train-iters",
            iters,
            "--lr",
            1e-3,
            "--min-lr",
            1e-4,
            "--lr-decay-style",
            "cosine",
            "--lr-warmup-iters",
            2,
            "--weight-decay",
            0.1,
            "--clip-grad",
            1.0,
            "--adam-beta1",
            0.9,
            "--adam-beta2",
            0.95,
            "--seed",
            1234,
            "--log-interval",
            1,
            "--eval-iters",
            0,
            "--eval-interval",
            1000,
            "--num-workers",
            0,
            "--tensor-model-parallel-size",
            tp,
            "--pipeline-model-parallel-size",
            pp,
            "--load",
            load,
            "--finetune",
            "--no-load-optim",
            "--no-load-rng",
        ]
    ]


def run(script: Path, cwd: Path, pythonpath: str, args: list[str], nproc: int, log: Path) -> dict[int, tuple]:
    """torchrun ``script``; {iteration: (loss, grad norm, ms)} from its log lines."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), str(script), *args]
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode:
        sys.exit(f"error: {script} failed ({proc.returncode}); its output is in {log}")
    return {int(m[1]): (m[3], m[4], float(m[2])) for m in _LINE.finditer(proc.stdout)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _median_ms(rows: dict[int, tuple]) -> float:
    times = [ms for it, (_, _, ms) in rows.items() if it > 2]
    return statistics.median(times) if times else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--megatron-lm", required=True, type=Path, help="root of a Megatron-LM clone (core_v0.16.1)"
    )
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--layouts", default="tp1pp2,tp2pp1", help="comma-separated tpXppY")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="kept when given (logs, checkpoints)")
    p.add_argument(
        "--extra", default="", help="more flags for both runs, e.g. --extra=--no-bias-swiglu-fusion"
    )
    opts = p.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="megatron_lm_dropin_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    megatron_lm = opts.megatron_lm.resolve()
    script = make_overlay(megatron_lm, work / "overlay")
    hf, data = make_model_and_data(work)
    tag = (
        subprocess.run(
            ["git", "-C", str(megatron_lm), "describe", "--tags", "--always"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown (not a git checkout)"
    )
    print(
        f"Megatron-LM: {megatron_lm} ({tag}); mindspeed_llm: {REPO}; {opts.iters} iterations, fp32, "
        f"{opts.nproc} processes, gbs 8, mbs 2, seq {SHAPE['seq']}"
        + (f"; extra flags: {opts.extra}" if opts.extra else "")
    )
    for layout in opts.layouts.split(","):
        m = re.fullmatch(r"tp(\d+)pp(\d+)", layout.strip())
        if not m:
            sys.exit(f"error: --layouts {layout}: expected tpXppY, e.g. tp1pp2")
        tp, pp = int(m[1]), int(m[2])
        load = convert(hf, work / f"mg_{layout}", tp, pp)
        args = flags(data, load, tp, pp, opts.iters) + opts.extra.split()
        theirs = run(script, script.parent, f"{script.parent}{os.pathsep}{REPO}", args, opts.nproc,
                     work / f"megatron_lm_{layout}.log")
        ours = run(REPO / "pretrain_gpt.py", REPO, str(REPO), args, opts.nproc, work / f"ours_{layout}.log")
        print(f"\n{layout.upper()} | Megatron-LM pretrain_gpt.py + import mindspeed_llm | ours")
        print("| iteration | Megatron-LM lm loss | ours lm loss | Megatron-LM grad norm | ours grad norm |")
        print("|---|---|---|---|---|")
        for it in sorted(set(theirs) | set(ours)):
            a, b = theirs.get(it, ("-", "-", 0)), ours.get(it, ("-", "-", 0))
            mark = "" if (a[0], a[1]) == (b[0], b[1]) else " *"
            print(f"| {it} | {a[0]} | {b[0]} | {a[1]} | {b[1]} |{mark}")
        print(
            f"median ms/iteration (after 2): Megatron-LM {_median_ms(theirs):.1f}, ours "
            f"{_median_ms(ours):.1f}"
        )
    print(f"\nlogs: {work}  (* = the row differs)")


if __name__ == "__main__":
    main()
