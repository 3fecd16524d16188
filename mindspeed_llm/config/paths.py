"""Data and tokenizer paths of a launch: ``--data-path`` blends, and the files each path must name.

Checked before the process group and the heavy imports (``check_command_line``), so a typo answers at
once with the path and what to pass instead. Torch-free.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Sequence

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.from_hf.config import is_cache_prefix

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def split_data_path(data_path: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``--data-path`` -> (prefixes, weights as given or None): ``P``, ``P1 P2 ...`` or
    ``W1 P1 W2 P2 ...``."""
    items = [s for item in data_path for s in item.split()]
    if len(items) > 1 and len(items) % 2 == 0:
        try:
            [float(w) for w in items[0::2]]
        except ValueError:
            pass
        else:
            return items[1::2], items[0::2]
    # One prefix, or several without weights (Megatron-LM reads them as equally weighted).
    return items, None


def _suggest_prefixes(prefix: str) -> list[str]:
    folder = os.path.dirname(prefix) or "."
    stem = os.path.basename(prefix)
    found = sorted(glob.glob(os.path.join(folder, f"{stem}*.idx")))
    if not found:
        found = sorted(glob.glob(os.path.join(folder, "*.idx")))
    return [f[: -len(".idx")] for f in found if os.path.isfile(f[: -len(".idx")] + ".bin")]


def check_data_prefix(prefix: str) -> None:
    """Raise a clear error unless ``prefix.bin`` and ``prefix.idx`` exist."""
    if prefix.endswith((".bin", ".idx")):
        raise ArgumentError(f"--data-path must be the prefix without .bin/.idx: try {prefix[:-4]}")
    if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx"):
        return
    candidates = _suggest_prefixes(prefix)
    folder = os.path.dirname(prefix) or "."
    if candidates:
        existing = ", ".join(os.path.basename(c) + ".{bin,idx}" for c in candidates)
        hint = f"files there: {existing}; use --data-path {candidates[0]}"
        if not prefix.endswith("_document") and any(c.startswith(prefix) for c in candidates):
            hint += (
                " (preprocess_data.py appends _<json-key>_document, e.g. _text_document, to --output-prefix)"
            )
    elif os.path.isdir(folder):
        hint = f"{folder} holds no .bin/.idx pair; run preprocess_data.py first"
    else:
        hint = f"{folder} does not exist"
    raise ArgumentError(f"--data-path {prefix}: {prefix}.bin / {prefix}.idx not found; {hint}")


def check_tokenizer_path(path: str) -> None:
    """Raise a clear error unless ``path`` is a folder with HF tokenizer files."""
    if not os.path.isdir(path) or not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ArgumentError(f"--tokenizer-name-or-path {path}: not a folder with tokenizer files "
                            f"({', '.join(TOKENIZER_FILES)}); point it at the local HF model folder")


_PACKED_SUFFIX = "_packed_{}_document"
_PACKED_KEYS = ("input_ids", "attention_mask", "labels")


def check_instruction_prefix(prefix: str) -> None:
    """Raise a clear error unless the three instruction datasets of ``--data-path PREFIX`` exist."""
    from mindspeed_llm.data.instruction import instruction_prefixes

    if prefix.endswith((".bin", ".idx")):
        prefix = prefix[:-4]
    for key in _PACKED_KEYS:
        if prefix.endswith(_PACKED_SUFFIX.format(key)):
            raise ArgumentError(
                f"--data-path {prefix}: give the prefix without _packed_{key}_document (the three "
                f"datasets share it): try --data-path {prefix[: -len(_PACKED_SUFFIX.format(key))]}"
            )
    paths = instruction_prefixes(prefix)
    present = [key for key, p in paths.items() if os.path.isfile(p + ".bin") and os.path.isfile(p + ".idx")]
    if len(present) == len(paths):
        return
    if present:
        missing = ", ".join(paths[k] + ".{bin,idx}" for k in paths if k not in present)
        raise ArgumentError(
            f"--data-path {prefix}: {missing} not found (only {', '.join(present)} is there): "
            "preprocess_data.py writes the three datasets together; re-run it"
        )
    if os.path.isfile(prefix + "_text_document.idx") or os.path.isfile(prefix + ".idx"):
        raise ArgumentError(f"--data-path {prefix} is pretraining data (no _packed_*_document datasets): "
                            "preprocess the instructions with preprocess_data.py --handler-name "
                            "AlpacaStyleInstructionHandler --prompt-type TYPE, or train with pretrain_gpt.py")
    folder = os.path.dirname(prefix) or "."
    stem = "_packed_input_ids_document.idx"
    found = sorted(f[: -len(stem)] for f in glob.glob(os.path.join(folder, "*" + stem)))
    hint = (f"instruction data there: --data-path {found[0]}" if found else
            f"{folder} does not exist" if not os.path.isdir(folder) else
            f"{folder} holds no instruction data; run preprocess_data.py --handler-name ... first")
    raise ArgumentError(f"--data-path {prefix}: {paths['input_ids']}.bin/.idx not found; {hint}")


def check_paths(args: argparse.Namespace) -> None:
    """The data prefixes and the tokenizer folder of a checked launch exist."""
    instruction = (args.is_instruction_dataset or args.stage == "sft") and args.data_path
    if instruction and not is_cache_prefix(split_data_path(args.data_path)[0][0]):
        check_instruction_prefix(split_data_path(args.data_path)[0][0])
    if getattr(args, "is_pairwise_dataset", False) and args.data_path:
        from mindspeed_llm.dpo.config import DpoError, check_pairwise_prefix

        try:
            prefix = split_data_path(args.data_path)[0][0]
            if not is_cache_prefix(prefix):  # a raw file, preprocessed at start-up (mindspeed_llm.from_hf)
                check_pairwise_prefix(prefix)
        except DpoError as exc:
            raise ArgumentError(str(exc)) from None
        instruction = True  # the prefix is not one indexed dataset
    for paths in (
        None if instruction else args.data_path,
        args.train_data_path,
        args.valid_data_path,
        args.test_data_path,
    ):
        for prefix in split_data_path(paths or [])[0]:
            if not is_cache_prefix(prefix):  # raw files are preprocessed at start-up (mindspeed_llm.from_hf)
                check_data_prefix(prefix)
    if args.tokenizer_type != "NullTokenizer":
        check_tokenizer_path(args.tokenizer_name_or_path)
