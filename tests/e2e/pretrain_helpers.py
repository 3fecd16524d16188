"""Helpers for the pretrain_gpt.py end-to-end tests: tiny data, tiny converted checkpoints, runs, log
parsing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from tests.helpers.launch import WITH_FILE_SIZE_LIMIT, StartedTorchrun, torchrun  # noqa: F401 (re-exported)
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import convert_hf_to_mg, make_hf_model  # noqa: F401 (re-exported to the e2e tests)

PRETRAIN = REPO_ROOT / "pretrain_gpt.py"
# pretrain_gpt.py whose save of iteration N (its first argument) is held before publishing (tests kill it
# there).
PAUSED_IN_SAVE = REPO_ROOT / "tests" / "e2e" / "scripts" / "pretrain_paused_in_save.py"
VOCAB = 128  # rows of the tiny HF models (tests/helpers/tiny.py)
EOD = 2  # their tokenizer's </s>
_LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|")


def make_indexed_dataset(prefix: Path, *, vocab: int = VOCAB, docs: int = 300, seed: int = 0,
                         learnable: bool = False) -> str:
    """``prefix.bin/.idx`` with random documents (ids 3..vocab-1, each ending in EOD), as preprocess_data
    writes.

    ``learnable``: each document counts up in steps of 7 from a random start (a bigram a model learns fast).
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(docs):
        n = int(rng.integers(16, 96))
        body = 3 + (rng.integers(0, vocab - 3) + 7 * np.arange(n)) % (vocab - 3) if learnable else \
            rng.integers(3, vocab, n)
        ids = np.append(body, EOD).astype(np.int64)
        builder.add_document(torch.from_numpy(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def write_instruction_data(prefix, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    """``prefix_packed_{input_ids,attention_mask,labels}_document`` (int32), one document per row."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    for key, col in (("input_ids", 0), ("attention_mask", 1), ("labels", 2)):
        path = f"{prefix}_packed_{key}_document"
        builder = IndexedDatasetBuilder(f"{path}.bin", dtype=np.int32)
        for row in rows:
            builder.add_document(torch.from_numpy(np.asarray(row[col], dtype=np.int64)), [len(row[col])])
        builder.finalize(f"{path}.idx")
    return str(prefix)


def model_flags(hf_dir: Path) -> list[str]:
    """Megatron model flags that describe the HF model in ``hf_dir``."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    flags = [
        "--use-mcore-models",
        "--num-layers",
        cfg["num_hidden_layers"],
        "--hidden-size",
        cfg["hidden_size"],
        "--ffn-hidden-size",
        cfg["intermediate_size"],
        "--num-attention-heads",
        cfg["num_attention_heads"],
        "--group-query-attention",
        "--num-query-groups",
        cfg["num_key_value_heads"],
        "--max-position-embeddings",
        cfg["max_position_embeddings"],
        "--position-embedding-type",
        "rope",
        "--rotary-base",
        cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        cfg["rms_norm_eps"],
        "--swiglu",
        "--disable-bias-linear",
        "--attention-dropout",
        "0.0",
        "--hidden-dropout",
        "0.0",
        "--make-vocab-size-divisible-by",
        "1",
    ]
    heads = cfg["num_attention_heads"]
    flags += ["--kv-channels", cfg.get("head_dim") or cfg["hidden_size"] // heads]
    if cfg["architectures"][0] == "Qwen2ForCausalLM":
        flags.append("--add-qkv-bias")
    if cfg["architectures"][0] == "Qwen3ForCausalLM":
        flags.append("--qk-layernorm")
    if not cfg.get("tie_word_embeddings", False):
        flags.append("--untie-embeddings-and-output-weights")
    return [str(f) for f in flags]


def train_flags(
    data: str, *, iters: int = 6, mbs: int = 1, gbs: int = 4, seq: int = 32, lr: float = 3e-3
) -> list[str]:
    """Training flags of the tiny runs (NullTokenizer: ids 0..126 and EOD 127; vocabulary 128)."""
    return [
        str(f)
        for f in [
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            VOCAB - 1,
            "--data-path",
            data,
            "--split",
            "100,0,0",
            "--seq-length",
            seq,
            "--micro-batch-size",
            mbs,
            "--global-batch-size",
            gbs,
            "--train-iters",
            iters,
            "--lr",
            lr,
            "--min-lr",
            lr / 10,
            "--lr-decay-style",
            "cosine",
            "--lr-warmup-iters",
            1,
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
            "--num-workers",
            0,
        ]
    ]


def own_index_cache(folder) -> list[str]:
    """``--data-cache-path`` of a new folder under ``folder``, for launches on one data file that run
    together: megatron-core's dataset index cache is built for one job at a time (a job reading it while
    another writes it read a truncated shuffle index: EOFError)."""
    import tempfile

    return ["--data-cache-path", tempfile.mkdtemp(prefix="index_cache-", dir=folder)]


def run_pretrain(*flags: str, nproc: int = 1, env: dict | None = None, timeout: int = 240) -> str:
    """pretrain_gpt.py under torchrun; its stdout (raises with the output on failure)."""
    return torchrun(PRETRAIN, *flags, nproc=nproc, env=env, timeout=timeout).stdout


def start_pretrain(
    *flags: str, nproc: int = 1, env: dict | None = None, timeout: int = 240
) -> StartedTorchrun:
    """:func:`run_pretrain` started now (independent runs overlap on the two cores); ``.result().stdout``."""
    return StartedTorchrun(PRETRAIN, *flags, nproc=nproc, env=env, timeout=timeout)


def losses(stdout: str) -> dict[int, float]:
    """{iteration: lm loss} from Megatron's log lines."""
    return {int(m.group(1)): float(m.group(2)) for m in _LOSS_LINE.finditer(stdout)}


def loss_strings(stdout: str) -> dict[int, str]:
    """{iteration: lm loss as printed} (for exact comparisons)."""
    return {int(m.group(1)): m.group(2) for m in _LOSS_LINE.finditer(stdout)}


def assert_close_losses(
    got: dict[int, float], want: dict[int, float], rel: float = 1e-5, label: str = ""
) -> None:
    """Same iterations, each loss within ``rel`` relative difference."""
    assert sorted(got) == sorted(want), f"{label}: iterations {sorted(got)} != {sorted(want)}"
    for it in want:
        diff = abs(got[it] - want[it]) / abs(want[it])
        assert diff <= rel, f"{label}: iteration {it} loss {got[it]} vs {want[it]} (relative {diff:.2e})"


def grad_norms(board) -> dict[int, float]:
    """{iteration: grad-norm} from a run's --tensorboard-dir (the log prints three decimals)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("grad-norm")}


def python() -> str:
    return sys.executable
