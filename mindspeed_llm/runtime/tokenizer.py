"""The tokenizer object megatron-core's ``GPTDataset`` needs: ``vocab_size``, ``eod``, ``unique_identifiers``.

``PretrainedFromHF`` (MindSpeed's name) and ``HuggingFaceTokenizer`` (Megatron-LM's) load a local HF
tokenizer folder: vocabulary size ``len(tokenizer)``, EOD = its EOS token. ``NullTokenizer`` (as in
Megatron-LM) has ids ``0..N-1`` from ``--vocab-size N`` and EOD ``N``, so its vocabulary is ``N + 1``.
No ``pad`` attribute is exposed: GPTDataset then pads with -1 instead of resetting a pad that equals
EOD (Qwen's case).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.config.paths import check_tokenizer_path


class TrainingTokenizer:
    """Vocabulary size, EOD id and identity of the tokenizer used to build the training data."""

    def __init__(self, vocab_size: int, eod: int, identity: dict, hf_tokenizer=None) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = OrderedDict(identity)
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (HF tokenizers only)."""
        if self.hf_tokenizer is None:
            raise TypeError("NullTokenizer cannot tokenize text")
        return self.hf_tokenizer(text).input_ids


def build_tokenizer(args: argparse.Namespace) -> TrainingTokenizer:
    """The tokenizer named by ``--tokenizer-type`` (and ``--tokenizer-name-or-path`` / ``--vocab-size``)."""
    if args.tokenizer_type == "NullTokenizer":
        return TrainingTokenizer(args.vocab_size + 1, args.vocab_size,
                                 {"class": "NullTokenizer", "vocab_size": args.vocab_size})
    path = args.tokenizer_name_or_path
    check_tokenizer_path(path)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=not args.tokenizer_not_use_fast)
    if tok.eos_token_id is None:
        raise ArgumentError(f"--tokenizer-name-or-path {path}: the tokenizer has no EOS token to use as EOD")
    return TrainingTokenizer(len(tok), int(tok.eos_token_id),
                             {"class": "HuggingFaceTokenizer", "path": os.path.abspath(path)}, tok)
