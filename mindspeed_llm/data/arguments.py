"""Command-line flags of ``preprocess_data.py`` (Megatron-LM / MindSpeed-LLM names)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from mindspeed_llm.data.bpe_engine import ENGINES
from mindspeed_llm.data.chat_templates import PROMPT_TYPES
from mindspeed_llm.data.errors import PreprocessError
from mindspeed_llm.data.handlers import (
    DEFAULT_KEYS,
    HANDLERS,
    INSTRUCTION_HANDLER_NAMES,
    is_instruction_handler,
)
from mindspeed_llm.data.tokenizer import TOKENIZER_TYPES


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for preprocess_data.py."""
    parser = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Tokenize raw text (parquet, csv, json, jsonl, txt, arrow) into megatron-core "
        "indexed datasets <output-prefix>_<key>_document.{bin,idx}.",
    )
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, help="a file, or a folder of files of one format")
    group.add_argument(
        "--json-keys", nargs="+", default=list(DEFAULT_KEYS),
        help="columns to tokenize, one dataset per key (default: text)",
    )
    group.add_argument(
        "--handler-name", default="GeneralPretrainHandler", choices=[*HANDLERS, *INSTRUCTION_HANDLER_NAMES],
        help="how rows become document text (default: GeneralPretrainHandler); the *InstructionHandler ones "
        "write fine-tuning data (<prefix>_packed_{input_ids,attention_mask,labels}_document)",
    )
    group.add_argument(
        "--skip-bad-rows", action="store_true",
        help="skip rows that cannot be read (not UTF-8, invalid JSON, missing key) instead of stopping",
    )
    group = parser.add_argument_group(
        "instruction data (AlpacaStyleInstructionHandler, SharegptStyleInstructionHandler)"
    )
    group.add_argument(
        "--prompt-type", default=None, choices=list(PROMPT_TYPES),
        help="chat template; chat_template = the tokenizer folder's own chat_template",
    )
    group.add_argument(
        "--map-keys", default=None,
        help="JSON dict renaming columns, MindSpeed name -> column, e.g. "
        "'{\"prompt\":\"instruction\",\"query\":\"input\",\"response\":\"output\"}'",
    )
    group.add_argument(
        "--seq-length", type=int, default=None,
        help="samples of this many tokens or more are dropped (cut to seq-length - 1 with --neat-pack)",
    )
    group.add_argument(
        "--pack", action="store_true", help="pack whole samples greedily into sequences of --seq-length"
    )
    group.add_argument(
        "--neat-pack", action="store_true",
        help="with --pack: the attention mask numbers the samples of a pack (1, 2, ...; 0 = padding)",
    )
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", default="PretrainedFromHF", choices=TOKENIZER_TYPES)
    group.add_argument("--tokenizer-name-or-path", help="local HF model/tokenizer folder")
    group.add_argument(
        "--append-eod", action="store_true", help="append the tokenizer's EOS to every document"
    )
    group.add_argument(
        "--tokenizer-engine", default="auto", choices=ENGINES,
        help="text handlers: auto encodes byte-level BPE tokenizers (GPT-2, Qwen2, Llama 3 style) with "
        "tiktoken where it gives exactly HF's ids (checked; else HF tokenizers); hf: always HF tokenizers",
    )
    group = parser.add_argument_group("output data")
    group.add_argument(
        "--output-prefix", required=True, help="path prefix of the output, e.g. ./dataset/alpaca"
    )
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    group.add_argument(
        "--n-subs", type=int, default=1,
        help="split the input into this many contiguous subsets processed concurrently, then "
        "merged in order (each subset gets workers/n-subs tokenizer processes)",
    )
    group.add_argument("--log-interval", type=int, default=1000, help="print throughput every N documents")
    group.add_argument(
        "--merge-group-keys", nargs="+", default=None,
        help="merge mode: for each key, concatenate the datasets in the --input folder whose names "
        "end in _<key>_document (or _<key>) into <output-prefix>_<key>_document",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the flags; raises PreprocessError with the fix in the message."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Check flag values that argparse cannot."""
    if args.workers < 1:
        raise PreprocessError(f"--workers {args.workers}: must be at least 1")
    if args.n_subs < 1:
        raise PreprocessError(f"--n-subs {args.n_subs}: must be at least 1")
    if args.log_interval < 1:
        raise PreprocessError(f"--log-interval {args.log_interval}: must be at least 1")
    if args.merge_group_keys is None and not args.tokenizer_name_or_path:
        raise PreprocessError("--tokenizer-name-or-path is required: point it at a local HF model folder")
    validate_instruction_args(args)
    prefix = args.output_prefix
    if not prefix or prefix.endswith(("/", os.sep)):
        raise PreprocessError(
            f"--output-prefix {prefix!r}: must name a file prefix, not a folder: try "
            f"{prefix.rstrip('/')}/data"
        )
    if prefix.endswith((".bin", ".idx")):
        raise PreprocessError(
            f"--output-prefix {prefix}: give the prefix without .bin/.idx: try {prefix[:-4]}"
        )
    keys = args.merge_group_keys or args.json_keys
    for key in keys:
        for suffix in (f"_{key}_document", "_document"):
            if prefix.endswith(suffix):
                raise PreprocessError(
                    f"--output-prefix {prefix}: already ends in {suffix}, and the tool appends "
                    f"_<key>_document itself: try --output-prefix {prefix[: -len(suffix)]}"
                )


def validate_instruction_args(args: argparse.Namespace) -> None:
    """The instruction flags: required with an instruction handler, refused without one."""
    instruction = is_instruction_handler(args.handler_name) and args.merge_group_keys is None
    given = [flag for flag, on in (
        ("--prompt-type", args.prompt_type is not None), ("--map-keys", args.map_keys is not None),
        ("--seq-length", args.seq_length is not None), ("--pack", args.pack), ("--neat-pack", args.neat_pack),
    ) if on]
    if not instruction:
        if given:
            raise PreprocessError(
                f"{given[0]}: only instruction handlers use it; pass --handler-name "
                "AlpacaStyleInstructionHandler or SharegptStyleInstructionHandler, or drop the flag"
            )
        return
    if args.prompt_type is None:
        raise PreprocessError(
            f"--handler-name {args.handler_name} needs --prompt-type (the chat template): one of "
            f"{', '.join(PROMPT_TYPES)}"
        )
    if list(args.json_keys) != list(DEFAULT_KEYS):
        raise PreprocessError(
            f"--json-keys: {args.handler_name} reads its columns by name; rename them with --map-keys instead"
        )
    if args.n_subs > 1:
        raise PreprocessError(
            f"--n-subs {args.n_subs}: not available with {args.handler_name} (samples are counted and packed "
            "over the whole input); drop --n-subs and use --workers"
        )
    if args.seq_length is not None and args.seq_length < 2:
        raise PreprocessError(f"--seq-length {args.seq_length}: must be at least 2")
    if args.pack and args.seq_length is None:
        raise PreprocessError("--pack needs --seq-length (the length of a packed sequence)")
    if args.neat_pack and not args.pack:
        raise PreprocessError("--neat-pack needs --pack")
