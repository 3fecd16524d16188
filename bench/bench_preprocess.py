"""preprocess_data.py throughput and peak memory against a Megatron-style per-document loop.

    python bench/bench_preprocess.py [--size-mb 200] [--vocab 100000] [--workers 1 2]

Generates a synthetic corpus (JSON lines, variable-length documents, a large Zipf-distributed
lexicon with some non-ASCII) under --work-dir (default /tmp/bench_preprocess), trains a byte-level
BPE with the ``tokenizers`` library on its first part and saves it as a transformers tokenizer
folder (both cached), then runs, as separate processes with the same tokenizer and worker count:

* ``preprocess_data.py`` (this repository: batched fast-tokenizer calls, numpy writes);
* the baseline: Megatron-LM ``tools/preprocess_data.py``'s way of encoding, i.e.
  ``Pool(workers).imap(encode, lines, 32)`` with ``json.loads`` + ``tokenizer(text).input_ids`` per
  document and megatron-core's ``IndexedDatasetBuilder.add_document`` per document.

Peak RSS is the largest sum of RSS over the process tree (main + workers), sampled every 50 ms.
Both outputs are compared byte for byte. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- corpus and tokenizer


def _lexicon(rng: np.random.Generator, size: int) -> np.ndarray:
    syllables = [
        c + v for c in "bcdfghjklmnprstvwzqx" for v in ["a", "e", "i", "o", "u", "y", "ou", "ai", "é", "ü"]
    ]
    syllables += ["中", "文", "字", "符", "ñ", "ø", "ß"]
    syl = np.array(syllables, dtype=object)
    lengths = rng.integers(1, 5, size=size)
    words = {"".join(rng.choice(syl, size=n)) for n in lengths}
    return np.array(sorted(words), dtype=object)


def generate_corpus(path: str, size_mb: float, seed: int = 0, mean_words: float = 300.0) -> None:
    """JSON lines of {"text": ...} documents, about size_mb MiB of text, deterministic.

    Document lengths are log-normal with about ``mean_words`` words on average (300 words, about
    2 KiB, is web-text-like; 40 is alpaca-like).
    """
    rng = np.random.default_rng(seed)
    lexicon = _lexicon(rng, 400_000)
    ranks = np.arange(1, lexicon.size + 1, dtype=np.float64)
    probs = 1.0 / ranks**1.05
    probs /= probs.sum()
    punct = np.array(
        [" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n", " 2024 ", ' "', '" ', "? ", "!\n\n"], dtype=object
    )
    target = int(size_mb * 2**20)
    written = 0
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            n_docs = 200
            mu = np.log(mean_words) - 0.9**2 / 2
            doc_words = np.clip(rng.lognormal(mean=mu, sigma=0.9, size=n_docs).astype(int), 1, 20000)
            words = lexicon[rng.choice(lexicon.size, size=int(doc_words.sum()), p=probs)]
            seps = punct[rng.integers(0, punct.size, size=words.size)]
            pieces = np.empty(words.size * 2, dtype=object)
            pieces[0::2] = words
            pieces[1::2] = seps
            start = 0
            lines = []
            for n in doc_words:
                text = "".join(pieces[2 * start : 2 * (start + n) - 1]).capitalize()
                start += n
                lines.append(json.dumps({"text": text}, ensure_ascii=False))
            block = "\n".join(lines) + "\n"
            f.write(block)
            written += len(block.encode("utf-8"))
    os.replace(tmp, path)


def train_tokenizer(corpus: str, folder: str, vocab: int, train_mb: float) -> None:
    """Byte-level BPE trained on the first train_mb MiB of the corpus, saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        budget = train_mb * 2**20
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                budget -= len(line)
                if budget < 0:
                    return
                yield json.loads(line)["text"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer)
    if tok.get_vocab_size() < vocab:
        raise SystemExit(f"the corpus gave only {tok.get_vocab_size()} tokens; raise --train-mb")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)


# ---------------------------------------------------------------- the per-document baseline


class _Encoder:
    """Megatron-LM tools/preprocess_data.py's Encoder, reduced to what the benchmark uses."""

    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer_path = tokenizer_path

    def initializer(self) -> None:
        from transformers import AutoTokenizer

        _Encoder.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)

    def encode(self, line: str):
        text = json.loads(line)["text"]
        ids = _Encoder.tokenizer(text).input_ids
        if ids:
            ids.append(_Encoder.tokenizer.eos_token_id)
        return ids, len(line)


def run_baseline(corpus: str, tokenizer_path: str, prefix: str, workers: int) -> None:
    """Pool(workers).imap(encode, lines, 32) + IndexedDatasetBuilder.add_document per document."""
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_path))
    encoder = _Encoder(tokenizer_path)
    builder = IndexedDatasetBuilder(prefix + "_text_document.bin", dtype=DType.optimal_dtype(vocab))
    with (
        open(corpus, encoding="utf-8") as fin,
        multiprocessing.Pool(workers, initializer=encoder.initializer) as pool,
    ):
        for ids, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(ids, [len(ids)] if ids else [])
    builder.finalize(prefix + "_text_document.idx")


# ---------------------------------------------------------------- measurement


def _measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, float]:
    """Wall seconds, CPU seconds, peak RSS and peak PSS (MiB, summed over the process tree) of a command.

    CPU seconds (user + sys of the command and every worker it waited for) are the fairer measure
    on a machine shared with other work.

    Forked workers share the parent's pages, so summed RSS counts shared pages once per process;
    PSS splits each shared page among the processes that map it.
    """
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    parent = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        try:
            procs = [parent] + parent.children(recursive=True)
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += info.pss
                except psutil.Error:
                    pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return elapsed, cpu, peak_rss / 2**20, peak_pss / 2**20


def _count_tokens(prefix: str) -> int:
    return os.path.getsize(prefix + "_text_document.bin")


def _digest(prefix: str) -> str:
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        with open(prefix + "_text_document" + ext, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="corpus size in MiB (default 200)")
    parser.add_argument("--mean-words", type=float, default=300.0,
                        help="mean words per document (default 300, about 2 KiB: web-text-like)")
    parser.add_argument("--vocab", type=int, default=100_000, help="BPE vocabulary size (default 100000)")
    parser.add_argument("--train-mb", type=float, default=24.0, help="MiB of corpus to train the BPE on")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-dir", default="/tmp/bench_preprocess")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--flat-check-mb",
        type=float,
        default=None,
        help="also run preprocess_data.py (largest --workers) on a corpus of this size, to show "
        "that peak memory does not grow with the input (default: a quarter of --size-mb)",
    )
    parser.add_argument("--run-baseline", nargs=4, metavar=("CORPUS", "TOKENIZER", "PREFIX", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_baseline:
        corpus, tok, prefix, workers = args.run_baseline
        run_baseline(corpus, tok, prefix, int(workers))
        return 0

    os.makedirs(args.work_dir, exist_ok=True)
    tag = "" if args.mean_words == 300.0 else f"_{args.mean_words:g}w"
    corpus = os.path.join(args.work_dir, f"corpus_{args.size_mb:g}mb{tag}.jsonl")
    tok_dir = os.path.join(args.work_dir, f"bpe_{args.vocab}")
    t0 = time.perf_counter()
    if not os.path.exists(corpus):
        generate_corpus(corpus, args.size_mb, mean_words=args.mean_words)
    print(f"corpus {corpus}: {os.path.getsize(corpus) / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        train_src = os.path.join(args.work_dir, "corpus_train.jsonl")
        if not os.path.exists(train_src):
            generate_corpus(train_src, args.train_mb, seed=1)
        t0 = time.perf_counter()
        train_tokenizer(train_src, tok_dir, args.vocab, args.train_mb)
        print(f"trained BPE {tok_dir} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    out = os.path.join(args.work_dir, "out")
    os.makedirs(out, exist_ok=True)
    rows = []
    digests = {}
    for workers in args.workers:
        runs = [
            (
                "preprocess_data.py",
                [
                    sys.executable,
                    os.path.join(ROOT, "preprocess_data.py"),
                    "--input",
                    corpus,
                    "--tokenizer-name-or-path",
                    tok_dir,
                    "--output-prefix",
                    os.path.join(out, f"ours_w{workers}"),
                    "--tokenizer-type",
                    "PretrainedFromHF",
                    "--workers",
                    str(workers),
                    "--append-eod",
                    "--log-interval",
                    "100000000",
                ],
            )
        ]
        if not args.skip_baseline:
            runs.append(
                (
                    "per-document loop (Megatron-LM style)",
                    [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--run-baseline",
                        corpus,
                        tok_dir,
                        os.path.join(out, f"base_w{workers}"),
                        str(workers),
                    ],
                )
            )
        for name, cmd in runs:
            prefix = cmd[cmd.index("--output-prefix") + 1] if "--output-prefix" in cmd else cmd[-2]
            print(f"running {name} --workers {workers}", file=sys.stderr)
            elapsed, cpu, rss, pss = _measure(cmd)
            tokens = _count_tokens(prefix) // (2 if vocab < 65500 else 4)
            digests[(name, workers)] = _digest(prefix)
            rows.append(
                (name, workers, elapsed, cpu, tokens, os.path.getsize(corpus) / 2**20 / elapsed, rss, pss)
            )
    same = len(set(digests.values())) == 1
    flat_mb = args.flat_check_mb if args.flat_check_mb is not None else args.size_mb / 4
    if flat_mb > 0:
        small = os.path.join(args.work_dir, f"corpus_{flat_mb:g}mb{tag}.jsonl")
        if not os.path.exists(small):
            generate_corpus(small, flat_mb, mean_words=args.mean_words)
        workers = max(args.workers)
        prefix = os.path.join(out, f"small_w{workers}")
        cmd = [sys.executable, os.path.join(ROOT, "preprocess_data.py"), "--input", small,
               "--tokenizer-name-or-path", tok_dir, "--output-prefix", prefix, "--workers", str(workers),
               "--append-eod", "--log-interval", "100000000"]
        print(f"running preprocess_data.py on {flat_mb:g} MiB", file=sys.stderr)
        elapsed, cpu, rss, pss = _measure(cmd)
        tokens = _count_tokens(prefix) // (2 if vocab < 65500 else 4)
        rows.append(
            (
                f"preprocess_data.py, {os.path.getsize(small) / 2**20:.0f} MiB corpus",
                workers,
                elapsed,
                cpu,
                tokens,
                os.path.getsize(small) / 2**20 / elapsed,
                rss,
                pss,
            )
        )
    print(
        f"\n{os.path.getsize(corpus) / 2**20:.0f} MiB JSON lines, byte-level BPE vocabulary {vocab}, "
        f"--append-eod; {os.cpu_count()} CPUs, Python {platform.python_version()}; outputs byte-identical: "
        f"{same}\n"
    )
    print("| tool | --workers | wall s | tokens/s (wall) | MiB/s (wall) | CPU s | tokens per CPU s "
          "| peak RSS MiB (sum) | peak PSS MiB (sum) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, workers, elapsed, cpu, tokens, mbs, rss, pss in rows:
        print(f"| {name} | {workers} | {elapsed:.1f} | {tokens / elapsed:,.0f} | {mbs:.2f} | {cpu:.1f} "
              f"| {tokens / cpu:,.0f} | {rss:.0f} | {pss:.0f} |")
    base = {
        w: (tokens / elapsed, tokens / cpu)
        for n, w, elapsed, cpu, tokens, *_ in rows
        if n.startswith("per-doc")
    }
    print()
    for name, workers, elapsed, cpu, tokens, *_ in rows:
        if name == "preprocess_data.py" and workers in base:
            wall_x = tokens / elapsed / base[workers][0]
            cpu_x = tokens / cpu / base[workers][1]
            print(
                f"speed-up at --workers {workers}: {wall_x:.2f}x tokens/s (wall), {cpu_x:.2f}x tokens per "
                "CPU second"
            )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
