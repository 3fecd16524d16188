"""Small local benchmark files in each format, made of the word-level tokenizer's words (w3 .. w119), for the
evaluation tests; nothing is downloaded."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def words(rng: random.Random, count: int, low: int = 3, high: int = 119) -> str:
    return " ".join(f"w{rng.randint(low, high)}" for _ in range(count))


def mmlu_rows(rng: random.Random, count: int) -> list[list[str]]:
    """MMLU rows: question, A, B, C, D, answer letter."""
    return [
        [
            words(rng, rng.randint(3, 9)),
            *(words(rng, rng.randint(1, 3)) for _ in range(4)),
            rng.choice("ABCD"),
        ]
        for _ in range(count)
    ]


def write_mmlu(folder: Path, subjects: dict[str, int], seed: int = 0) -> Path:
    """An MMLU-format folder: dev/<subject>_dev.csv (5 rows) and test/<subject>_test.csv (``count`` rows)."""
    rng = random.Random(seed)
    for split in ("dev", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    for subject, count in subjects.items():
        for split, rows in (("dev", mmlu_rows(rng, 5)), ("test", mmlu_rows(rng, count))):
            with open(folder / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(rows)
    return folder


def write_lm_eval_tasks(folder: Path, cache: Path, seed: int = 1) -> Path:
    """Three lm-eval tasks on local JSON-lines files: ``tiny_mc`` (multiple_choice: acc, acc_norm; one
    document longer than the model's 256 positions, left-truncated), ``tiny_gen`` (generate_until, stop at
    ``w7``, exact match) and ``tiny_ppl`` (loglikelihood_rolling: word perplexity, a text over two
    windows)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    mc = [
        {
            "question": words(rng, rng.randint(4, 30)),
            "choices": [words(rng, rng.randint(1, 4)) for _ in range(4)],
            "label": rng.randrange(4),
        }
        for _ in range(10)
    ]
    mc.append({"question": words(rng, 300), "choices": [words(rng, 2) for _ in range(3)], "label": 1})
    gen = [{"prompt": words(rng, rng.randint(3, 20)), "target": words(rng, 2)} for _ in range(6)]
    ppl = [{"text": words(rng, n)} for n in (40, 90, 400)]
    for name, rows in (("mc", mc), ("gen", gen), ("ppl", ppl)):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def dataset(name: str) -> str:
        return (
            f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}.jsonl\n"
            f"  cache_dir: {cache}\ntest_split: test\n"
        )

    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + dataset("mc") + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}} w3"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + dataset("gen") + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["w7"]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n",
        encoding="utf-8",
    )
    (folder / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n" + dataset("ppl") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
        encoding="utf-8",
    )
    return folder


# The words a benchmark's prompt needs beyond w3 .. w119 (ids 120 ..): MMLU's letters and its "Answer:".
PROMPT_WORDS = ("A", "B", "C", "D", "Answer", ":", ".")


def save_eval_tokenizer(folder: Path) -> None:
    """A word-level tokenizer (vocabulary 127 < the tiny models' 128): ``<unk>``, ``<s>``, ``</s>``,
    w3 .. w119, then :data:`PROMPT_WORDS`; other words are ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 120)}}
    vocab.update({word: 120 + i for i, word in enumerate(PROMPT_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))


def write_gsm8k(folder: Path, seed: int = 2) -> Path:
    """GSM8K's layout: train.jsonl (shots) and test.jsonl; answers end with '#### <number>'."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 5), ("test", 4)):
        rows = [
            {
                "question": words(rng, rng.randint(4, 12)),
                "answer": f"{words(rng, 3)}\n#### {rng.randint(1, 99)}",
            }
            for _ in range(count)
        ]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return folder
