"""Megatron-LM's own pretrain_gpt.py with ``import mindspeed_llm`` vs ours: same checkpoint, data, flags.

    python bench/megatron_lm_dropin.py --megatron-lm PATH_TO_MEGATRON_LM_CLONE [--iters 10]
                                       [--layouts tp1pp2,tp2pp1] [--precisions fp32,bf16] [--workdir DIR]

Needs a Megatron-LM clone (tested: tag core_v0.16.1) and ``pip install -e .[megatron-lm]`` (``six``,
which its tokenizer package imports). Megatron-LM's side is set up and launched with the commands of
docs/training.md ("Megatron-LM's own scripts"), run as written by bash with their ``MEGATRON_LM`` and
``OVERLAY`` pointed at the clone and this run's folder: the build block (an overlay folder of links to the
clone's ``megatron/training``, ``legacy``, ``post_training``, ``rl`` beside the installed megatron-core, its
``gpt_builders.py`` and ``model_provider.py``, and its ``pretrain_gpt.py`` with ``import mindspeed_llm`` as
the first line), then the launch block once as written (mock data, bf16, PP2), then its launch line
(``PYTHONSAFEPATH=1 PYTHONPATH=... torchrun --nproc-per-node 2 $OVERLAY/pretrain_gpt.py``) with this
bench's flags instead of the docs' for every comparison. Megatron-LM's default flags are used
throughout: no ``--no-masked-softmax-fusion`` and no other ``--no-*-fusion``.

One random Qwen2-shaped HF model (4 layers, hidden 128, GQA 4/2, SwiGLU 352, vocabulary 1024,
untied, QKV bias, fp32) is converted by convert_ckpt.py to each layout; one random indexed dataset;
both trainers load the converted weights with ``--finetune`` and run the same flags, in fp32 and in bf16
(``--bf16``), under torchrun (2 processes) on this machine's device. Prints, per layout and precision,
the lm loss and grad norm of every iteration side by side, and the median time per iteration after the
first two. Iteration 2 is marked when Megatron-LM's printed loss is the mean of iterations 1 and 2 (its
logging, explained in the output); any other difference is marked ``*``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(layers=4, hidden=128, heads=4, groups=2, ffn=352, vocab=1024, seq=128)
DOCS = REPO / "docs" / "training.md"
DOCS_SECTION = "## Megatron-LM's own scripts"
NPROC = 2  # the docs' launch line: torchrun --nproc-per-node 2
_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)"
                   r".*?lm loss: ([0-9.E+-]+) \|.*?grad norm: ([0-9.]+)")


def docs_blocks() -> tuple[str, str]:
    """The build block and the launch block of docs/training.md's section on Megatron-LM's scripts."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(DOCS_SECTION)
    end = text.find("\n## ", start + len(DOCS_SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], re.S)
    if len(blocks) < 2 or "pretrain_gpt.py" not in blocks[1]:
        sys.exit(f"error: {DOCS}: expected the overlay's build block, then the launch block, in "
                 f"{DOCS_SECTION!r}")
    return blocks[0], blocks[1]


def with_paths(block: str, **paths: Path) -> str:
    """``block`` with its ``NAME=...`` assignment of each of ``paths`` pointing at that path instead."""
    for name, path in paths.items():
        block, n = re.subn(rf"^{name}=.*$", f"{name}={shlex.quote(str(path))}", block, flags=re.M)
        if not n:
            sys.exit(f"error: {DOCS}: no {name}=... line in the block:\n{block}")
    return block


def launch_prefix(block: str) -> str:
    """The launch block up to its script (assignments, PYTHONSAFEPATH/PYTHONPATH, torchrun, the script)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    cut = joined.index("pretrain_gpt.py") + len("pretrain_gpt.py")
    return joined[:cut]


def make_overlay(megatron_lm: Path, target: Path) -> Path:
    """Run the docs' build block: the overlay in ``target``; returns its pretrain_gpt.py."""
    if (
        not (megatron_lm / "megatron" / "training").is_dir()
        or not (megatron_lm / "pretrain_gpt.py").is_file()
    ):
        sys.exit(
            f"error: --megatron-lm {megatron_lm}: no megatron/training or pretrain_gpt.py there; pass the "
            "root of a Megatron-LM clone (git clone https://github.com/NVIDIA/Megatron-LM -b core_v0.16.1)"
        )
    build, _ = docs_blocks()
    subprocess.run(["bash", "-euc", with_paths(build, MEGATRON_LM=megatron_lm, OVERLAY=target)], check=True)
    return target / "pretrain_gpt.py"


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


def _env(pythonpath: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PET_MASTER_PORT": str(_free_port())}  # torchrun's --master-port, for the docs' line too


def _rows(proc: subprocess.CompletedProcess, what: str, log: Path) -> dict[int, tuple]:
    log.write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode:
        sys.exit(f"error: {what} failed ({proc.returncode}); its output is in {log}")
    return {int(m[1]): (m[3], m[4], float(m[2])) for m in _LINE.finditer(proc.stdout)}


def run_docs_launch(megatron_lm: Path, overlay: Path, args: list[str], log: Path) -> dict[int, tuple]:
    """The docs' launch line (its script and environment) with ``args`` as the script's flags."""
    _, launch = docs_blocks()
    script = with_paths(launch_prefix(launch), MEGATRON_LM=megatron_lm, OVERLAY=overlay) + ' "$@"'
    proc = subprocess.run(["bash", "-euc", script, "bash", *args], env=_env(str(REPO)), capture_output=True,
                          text=True, cwd=log.parent)
    return _rows(proc, "Megatron-LM's pretrain_gpt.py (the docs' launch line)", log)


def run_docs_block_as_written(megatron_lm: Path, overlay: Path, log: Path) -> dict[int, tuple]:
    """The docs' whole launch block, flags included, as written."""
    _, launch = docs_blocks()
    proc = subprocess.run(["bash", "-euc", with_paths(launch, MEGATRON_LM=megatron_lm, OVERLAY=overlay)],
                          env=_env(str(REPO)), capture_output=True, text=True, cwd=log.parent)
    return _rows(proc, "the docs' launch block", log)


def run_ours(args: list[str], log: Path) -> dict[int, tuple]:
    """torchrun our pretrain_gpt.py."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(NPROC), "--master-addr",
           "127.0.0.1", str(REPO / "pretrain_gpt.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(str(REPO)), capture_output=True, text=True)
    return _rows(proc, "our pretrain_gpt.py", log)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _median_ms(rows: dict[int, tuple]) -> float:
    times = [ms for it, (_, _, ms) in rows.items() if it > 2]
    return statistics.median(times) if times else float("nan")


def iteration_two_note(theirs: dict[int, tuple], ours: dict[int, tuple]) -> str | None:
    """The explanation when Megatron-LM's iteration-2 loss is the mean of our iterations 1 and 2."""
    try:
        first, second, printed = float(ours[1][0]), float(ours[2][0]), float(theirs[2][0])
    except (KeyError, ValueError):
        return None
    if abs(printed - (first + second) / 2) > 2e-6 or theirs[2][1] != ours[2][1]:
        return None
    return (f"(first + second) / 2 = ({first:.6f} + {second:.6f}) / 2 = {(first + second) / 2:.6f}, which "
            f"Megatron-LM prints for iteration 2 ({printed:.6f}); the grad norms are equal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--megatron-lm", required=True, type=Path, help="root of a Megatron-LM clone (core_v0.16.1)"
    )
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--layouts", default="tp1pp2,tp2pp1", help="comma-separated tpXppY")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--workdir", type=Path, default=None, help="kept when given (logs, checkpoints)")
    p.add_argument(
        "--extra", default="", help="more flags for both runs, e.g. --extra=--no-bias-swiglu-fusion"
    )
    opts = p.parse_args()
    work = (opts.workdir or Path(tempfile.mkdtemp(prefix="megatron_lm_dropin_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    megatron_lm = opts.megatron_lm.resolve()
    overlay = work / "overlay"
    make_overlay(megatron_lm, overlay)
    hf, data = make_model_and_data(work)
    tag = (
        subprocess.run(
            ["git", "-C", str(megatron_lm), "describe", "--tags", "--always"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown (not a git checkout)"
    )
    print(
        f"Megatron-LM: {megatron_lm} ({tag}); mindspeed_llm: {REPO}; {opts.iters} iterations, "
        f"{opts.precisions}, {NPROC} processes, gbs 8, mbs 2, seq {SHAPE['seq']}; Megatron-LM's default flags"
        + (f"; extra flags: {opts.extra}" if opts.extra else "")
    )
    rows = run_docs_block_as_written(megatron_lm, overlay, work / "docs_launch_block.log")
    last = rows[max(rows)] if rows else ("-", "-", 0)
    print(f"the docs' commands as written (build block, then launch block: mock data, bf16, PP2): "
          f"{len(rows)} iterations logged, last lm loss {last[0]}, grad norm {last[1]}")
    notes = []
    for layout in opts.layouts.split(","):
        m = re.fullmatch(r"tp(\d+)pp(\d+)", layout.strip())
        if not m:
            sys.exit(f"error: --layouts {layout}: expected tpXppY, e.g. tp1pp2")
        tp, pp = int(m[1]), int(m[2])
        load = convert(hf, work / f"mg_{layout}", tp, pp)
        for precision in opts.precisions.split(","):
            if precision not in ("fp32", "bf16"):
                sys.exit(f"error: --precisions {precision}: expected fp32 or bf16")
            args = (flags(data, load, tp, pp, opts.iters) + (["--bf16"] if precision == "bf16" else [])
                    + opts.extra.split())
            name = f"{layout}_{precision}"
            theirs = run_docs_launch(megatron_lm, overlay, args, work / f"megatron_lm_{name}.log")
            ours = run_ours(args, work / f"ours_{name}.log")
            note = iteration_two_note(theirs, ours)
            print(f"\n{layout.upper()} {precision} | Megatron-LM pretrain_gpt.py + import mindspeed_llm "
                  "| ours")
            print("| iteration | Megatron-LM lm loss | ours lm loss | Megatron-LM grad norm "
                  "| ours grad norm |")
            print("|---|---|---|---|---|")
            for it in sorted(set(theirs) | set(ours)):
                a, b = theirs.get(it, ("-", "-", 0)), ours.get(it, ("-", "-", 0))
                mark = "" if (a[0], a[1]) == (b[0], b[1]) else (" †" if it == 2 and note else " *")
                print(f"| {it} | {a[0]} | {b[0]} | {a[1]} | {b[1]} |{mark}")
            print(
                f"median ms/iteration (after 2): Megatron-LM {_median_ms(theirs):.1f}, ours "
                f"{_median_ms(ours):.1f}"
            )
            if note:
                print(f"† iteration 2: {note}")
                notes.append(name)
    print(f"\nlogs: {work}  (* = the row differs)")
    if notes:
        print("† Megatron-LM's logging, not its training: its training_log prints the mean loss since its "
              "last line, and it prints the first iteration's line without resetting that sum "
              "(should_reset = not is_first_iteration), so its iteration-2 line is the mean of iterations 1 "
              "and 2. Ours prints each iteration's own loss; every other row and every grad norm is equal.")


if __name__ == "__main__":
    main()
