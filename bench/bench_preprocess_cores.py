"""Preprocessing on the cores it is given: ours against Megatron-LM's tools/preprocess_data.py, and ours
on two cores against ours on one.

    python bench/bench_preprocess_cores.py --megatron-lm PATH_TO_MEGATRON_LM_CLONE [--size-mb 50]
                                           [--rounds 3] [--work-dir DIR]

Corpus: JSON lines of this machine's own text, about --size-mb MiB: Python sources (code), .md/.rst/.txt
files (docs) and lm-eval's task files (prompts in many languages), interleaved, from the Python
environment's site-packages; each file cut at paragraph breaks into documents of at least --doc-chars
characters (1000: about web-text size; the larger they are, the more both tools are bound by the tokenizer's
own Rust code, and the less Megatron-LM's per-document Python costs it). Tokenizer: Qwen2.5's (rebuilt
offline by mindspeed_llm.quickstart.qwen_tokenizer, 151,665 entries: int32 ids), ``--append-eod``.

Every round runs, in an order that rotates from round to round, each a separate process:

* ``mlm_w2``: Megatron-LM's own ``tools/preprocess_data.py --workers 2`` (a copy with ``import mindspeed_llm``
  as its first line, in an overlay folder beside the installed megatron-core, run with PYTHONSAFEPATH=1);
* ``ours_w2``: our ``preprocess_data.py --workers 2`` (``--tokenizer-engine auto``: tiktoken where it is
  exact, see docs/data.md; the engine each run used is read from its log and printed);
* ``ours_w1_1core``: our ``preprocess_data.py --workers 1`` held to one core (``taskset -c 0``);
* ``ours_w2_hf``: our ``preprocess_data.py --workers 2 --tokenizer-engine hf`` (HF tokenizers alone).

and checks that all outputs (.bin and .idx) are byte-identical. Prints the load average before each run,
the median wall time and CPU time (the process tree's) per setting, and the ratios. Run it under the lock
on a shared machine (``flock /tmp/cpu.lock python bench/...``): the figures are only as quiet as the machine.

``--profile-mb M`` first prints where one process's CPU seconds go on the corpus's first M MiB, stage by
stage (start-up, reading and parsing, the tokenizer's own Rust code with and without the NFC step, the
id lists to numpy, the fast engine's start-up and its cost per MiB).

Ours needs tiktoken for its fast engine (``pip install tiktoken``, which ``make install`` does); a copy
outside the environment may be put on PYTHONPATH, which the runs keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERLAY_PACKAGES = ("training", "legacy", "post_training", "rl")


def documents(text: str, doc_chars: int) -> list[str]:
    """A file's text cut at paragraph breaks into documents of at least ``doc_chars`` characters."""
    docs, current = [], ""
    for paragraph in text.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= doc_chars:
            docs.append(current)
            current = ""
    if current.strip():
        docs.append(current)
    return docs


def make_corpus(path: Path, size_mb: float, doc_chars: int) -> None:
    """JSON lines {"text": ...} of code, docs and multilingual task files from site-packages."""
    if path.is_file():
        return
    site = Path(sysconfig.get_paths()["purelib"])
    kinds = {
        "code": sorted(site.rglob("*.py")),
        "docs": sorted(p for ext in ("*.md", "*.rst", "*.txt") for p in site.rglob(ext)),
        "languages": sorted(p for ext in ("*.yaml", "*.json", "*.jsonl")
                            for p in (site / "lm_eval" / "tasks").rglob(ext)),
    }
    target = int(size_mb * 2**20)
    written = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        iters = [iter(files) for files in kinds.values()]
        while written < target and iters:
            for it in list(iters):
                path_in = next(it, None)
                if path_in is None:
                    iters.remove(it)
                    continue
                try:
                    text = path_in.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                for doc in documents(text, doc_chars):
                    line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
                    out.write(line)
                    written += len(line.encode("utf-8"))
    tmp.rename(path)


def make_tokenizer(folder: Path) -> None:
    if not (folder / "tokenizer.json").is_file():
        from mindspeed_llm.quickstart.qwen_tokenizer import write_qwen25_tokenizer

        write_qwen25_tokenizer(folder)


def make_overlay(megatron_lm: Path, overlay: Path) -> Path:
    """Megatron-LM's training packages beside the installed megatron-core; its tool with the import added."""
    tool = megatron_lm / "tools" / "preprocess_data.py"
    if not tool.is_file():
        sys.exit(f"error: --megatron-lm {megatron_lm}: no tools/preprocess_data.py there; pass a Megatron-LM "
                 "clone's root (git clone -b core_v0.16.1 https://github.com/NVIDIA/Megatron-LM)")
    (overlay / "megatron").mkdir(parents=True, exist_ok=True)
    (overlay / "tools").mkdir(exist_ok=True)
    for name in OVERLAY_PACKAGES:
        link = overlay / "megatron" / name
        if (megatron_lm / "megatron" / name).is_dir() and not link.exists():
            link.symlink_to(megatron_lm / "megatron" / name)
    script = overlay / "tools" / "preprocess_data.py"
    script.write_text("import mindspeed_llm\n" + tool.read_text())
    return script


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed ({proc.returncode}); its output is in {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


PROFILE = r"""
import json, sys, time
t0 = time.process_time()
def lap(name, mib, t=[t0]):
    now = time.process_time()
    per = f"{(now - t[0]) / mib:.2f}" if mib else "-"
    print(f"| {name} | {now - t[0]:.2f} | {per} |", flush=True)
    t[0] = now
import os
os.environ["TOKENIZERS_PARALLELISM"] = "false"
corpus, tokenizer, limit = sys.argv[1], sys.argv[2], float(sys.argv[3]) * 2**20
print("| stage (one process, CPU s) | CPU s | CPU s per MiB |\n|---|---|---|")
from mindspeed_llm.data.tokenizer import DocumentTokenizer, flatten_ids
tok = DocumentTokenizer(tokenizer, append_eod=True)
lap("import transformers (and torch) + AutoTokenizer.from_pretrained (the main process, serial)", 0)
encoder = tok.backend_spec().build()
lap("a worker's backend from the serialized tokenizer", 0)
texts, size = [], 0
with open(corpus, "rb") as f:
    for line in f:
        texts.append(json.loads(line)["text"])
        size += len(line)
        if size >= limit:
            break
mib = size / 2**20
lap(f"read + parse {mib:.1f} MiB of JSON lines ({len(texts)} documents)", mib)
backend = encoder.backend
[e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
lap("tokenizers encode_batch_fast, every text through NFC (as Megatron-LM's tool)", mib)
ids = encoder.ids(texts)
lap("ours with --tokenizer-engine hf: the same, NFC skipped where it changes nothing", mib)
flat, lengths = flatten_ids(ids)
lap("id lists -> flat numpy array + lengths", mib)
tok.finish(flat, lengths)
lap("EOD appended, cast to int32", mib)
import dataclasses
from mindspeed_llm.data import bpe_engine
spec = dataclasses.replace(tok.backend_spec(), engine="auto")
fast = spec.build()
lap(f"a worker's backend and fast engine ({fast.engine}; the probe texts checked)", 0)
if fast.fast is not None:
    fast.flat_ids(texts)
    lap(f"ours: the fast engine (tiktoken, HF for 1 document in {bpe_engine.SAMPLE_EVERY}), flat ids", mib)
    tables = bpe_engine.read_tables(json.loads(spec.json()))
    lap("the main process: the engine's tables from tokenizer.json", 0)
    assert bpe_engine.rank_condition_failure(tables) is None
    lap("the main process: the rank condition on every merge (once per run)", 0)
for t in texts[:2000]:
    tok.hf(t).input_ids
lap("Megatron-LM's per-document tokenizer(text).input_ids, first 2000 documents", 0)
"""


def profile(corpus: Path, tokenizer: Path, mib: float, env: dict) -> None:
    """Print the CPU seconds per stage of tokenizing the corpus's first ``mib`` MiB in one process."""
    cmd = [sys.executable, "-c", PROFILE, str(corpus), str(tokenizer), str(mib)]
    subprocess.run(cmd, env=env, check=True)


def engine_used(log: Path, name: str) -> str:
    """The tokenizer engine a run's log names (Megatron-LM's tool: HF tokenizers, per document)."""
    if name.startswith("mlm"):
        return "HF tokenizers, tokenizer(text) per document"
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("tokenizer engine: "):
            return line[len("tokenizer engine: "):].split(" (")[0].split(",")[0]
    return "HF tokenizers (--tokenizer-engine hf)"


def digest(prefix: str) -> str:
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        with open(prefix + ext, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megatron-lm", required=True, type=Path,
                   help="root of a Megatron-LM clone (core_v0.16.1)")
    p.add_argument("--size-mb", type=float, default=50.0)
    p.add_argument("--doc-chars", type=int, default=1000,
                   help="documents are a file's paragraphs, joined up to at least this many characters")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_preprocess_cores"))
    p.add_argument("--profile-mb", type=float, default=0.0,
                   help="first print the CPU seconds per stage on this many MiB of the corpus (0: skip)")
    opts = p.parse_args()
    work = opts.work_dir
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    corpus = work / f"corpus_{opts.size_mb:g}mb_{opts.doc_chars}.jsonl"
    make_corpus(corpus, opts.size_mb, opts.doc_chars)
    tokenizer = work / "qwen25_tokenizer"
    make_tokenizer(tokenizer)
    overlay = work / "overlay"
    tool = make_overlay(opts.megatron_lm.resolve(), overlay)
    # Entries already on PYTHONPATH stay (after ours): a tiktoken installed outside the environment.
    path = os.pathsep.join(p for p in (str(overlay), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONSAFEPATH": "1"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    env.pop("RAYON_NUM_THREADS", None)
    common = ["--input", str(corpus), "--append-eod", "--json-keys", "text", "--log-interval", "100000000"]
    ours = [sys.executable, str(REPO / "preprocess_data.py"), *common, "--tokenizer-type", "PretrainedFromHF",
            "--tokenizer-name-or-path", str(tokenizer)]
    settings = {
        "mlm_w2": [sys.executable, str(tool), *common, "--tokenizer-type", "HuggingFaceTokenizer",
                   "--tokenizer-model", str(tokenizer), "--workers", "2"],
        "ours_w2": [*ours, "--workers", "2"],
        "ours_w1_1core": ["taskset", "-c", "0", *ours, "--workers", "1"],
        "ours_w2_hf": [*ours, "--workers", "2", "--tokenizer-engine", "hf"],
    }
    names = list(settings)
    if opts.profile_mb:
        profile(corpus, tokenizer, opts.profile_mb,
                {**env, "PYTHONPATH": os.pathsep.join(path.split(os.pathsep)[1:])})
    with open(corpus, "rb") as f:
        docs = sum(1 for _ in f)
    print(f"corpus {corpus} ({corpus.stat().st_size / 2**20:.1f} MiB, {docs} documents of code, docs and "
          "lm-eval task files); "
          f"tokenizer Qwen2.5 ({tokenizer}); --append-eod; {os.cpu_count()} CPUs; {opts.rounds} rounds; "
          "a shared machine: figures are as quiet as it was")
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    digests: dict[str, set[str]] = {n: set() for n in names}
    engines: dict[str, set[str]] = {n: set() for n in names}
    for r in range(opts.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            load = os.getloadavg()[0]
            cmd = [*settings[name], "--output-prefix", str(out / "corpus")]
            wall, cpu = timed(cmd, env, work / f"{name}.log")
            walls[name].append(wall)
            cpus[name].append(cpu)
            digests[name].add(digest(str(out / "corpus_text_document")))
            engines[name].add(engine_used(work / f"{name}.log", name))
            print(f"round {r + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU "
                  f"(load average before: {load:.2f})", flush=True)
    same = len(set().union(*digests.values())) == 1
    med = {n: statistics.median(walls[n]) for n in names}
    print("\n| setting | command | tokenizer engine | median wall s | median CPU s |")
    print("|---|---|---|---|---|")
    described = {
        "mlm_w2": "Megatron-LM tools/preprocess_data.py --workers 2 (+ import mindspeed_llm)",
        "ours_w2": "preprocess_data.py --workers 2",
        "ours_w1_1core": "taskset -c 0 preprocess_data.py --workers 1",
        "ours_w2_hf": "preprocess_data.py --workers 2 --tokenizer-engine hf",
    }
    for n in names:
        print(f"| {n} | {described[n]} | {', '.join(sorted(engines[n]))} | {med[n]:.2f} | "
              f"{statistics.median(cpus[n]):.2f} |")
    print(f"\nMegatron-LM --workers 2 / ours --workers 2: {med['mlm_w2'] / med['ours_w2']:.2f}x; "
          f"ours --workers 1 on one core / ours --workers 2: {med['ours_w1_1core'] / med['ours_w2']:.2f}x; "
          f"ours --tokenizer-engine hf / ours (both --workers 2): {med['ours_w2_hf'] / med['ours_w2']:.2f}x")
    found = ", ".join(sorted(set().union(*digests.values())))
    print(f"outputs byte-identical (.bin + .idx, every run): {same} (sha256 prefixes: {found})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
