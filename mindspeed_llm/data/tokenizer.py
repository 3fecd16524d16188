"""The HF tokenizer wrapper: ``AutoTokenizer(text).input_ids`` per document, computed in batches.

Ids match Megatron-LM's ``HuggingFaceTokenizer`` (``tokenizer(text).input_ids``; vocabulary size
``len(tokenizer)``; EOD = the tokenizer's EOS). For fast tokenizers the batch goes straight to the
``tokenizers`` backend (``encode_batch_fast``), which is what ``PreTrainedTokenizerFast.__call__``
does internally minus building Python dicts of masks; the first batch in every process is checked
against ``tokenizer(text).input_ids`` and any difference switches to the plain call.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import numpy as np

from mindspeed_llm.data.errors import PreprocessError
from mindspeed_llm.data.indexed_writer import optimal_token_dtype

logger = logging.getLogger(__name__)

TOKENIZER_TYPES = ("PretrainedFromHF",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_CHECK_DOCS = 8


def load_hf_tokenizer(path: str) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` from local files, with errors a user can act on."""
    flag = "--tokenizer-name-or-path"
    if not os.path.exists(path):
        raise PreprocessError(
            f"{flag} {path}: no such folder; point it at a local HF model folder with tokenizer files "
            "(downloads are not attempted)"
        )
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise PreprocessError(
            f"{flag} {path}: the folder holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "copy the tokenizer files of the HF model there"
        )
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "sequence longer than model_max_length" warnings
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types here
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreprocessError(
            f"{flag} {path}: transformers could not load a tokenizer from it ({first_line}); "
            "check that it is a HF model folder with tokenizer.json or tokenizer_config.json"
        ) from exc


class DocumentTokenizer:
    """Tokenizes batches of documents into one flat id array plus per-document lengths."""

    def __init__(self, path: str, append_eod: bool = False) -> None:
        self.path = path
        self.append_eod = append_eod
        self.hf = load_hf_tokenizer(path)
        self.vocab_size = len(self.hf)
        self.dtype = optimal_token_dtype(self.vocab_size)
        self.eod = self.hf.eos_token_id
        if append_eod and self.eod is None:
            raise PreprocessError(
                f"--append-eod: the tokenizer in {path} has no EOS token; set eos_token in its "
                "tokenizer_config.json or drop --append-eod"
            )
        self._backend = self._fast_backend()
        self._checked = False

    def _fast_backend(self) -> Any:
        """A copy of the ``tokenizers`` backend set up as ``__call__`` uses it, or None."""
        try:
            from transformers import PreTrainedTokenizerFast
        except ImportError:  # pragma: no cover - transformers always ships it
            return None
        if not isinstance(self.hf, PreTrainedTokenizerFast):
            return None
        if type(self.hf)._encode_plus is not PreTrainedTokenizerFast._encode_plus:
            return None  # the class changes how text is encoded: use its own call
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.hf.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(getattr(self.hf, "split_special_tokens", False))
        return backend

    def reference_ids(self, text: str) -> list[int]:
        """Ids exactly as Megatron-LM computes them for one document (without EOD)."""
        return self.hf(text).input_ids

    def _ids_lists(self, texts: list[str]) -> list[list[int]]:
        if self._backend is None:
            return self.hf(texts).input_ids if texts else []
        ids = [enc.ids for enc in self._backend.encode_batch_fast(texts, add_special_tokens=True)]
        if not self._checked:
            self._checked = True
            sample = range(min(_CHECK_DOCS, len(texts)))
            if any(ids[i] != self.reference_ids(texts[i]) for i in sample):
                logger.warning("tokenizer backend differs from tokenizer(text); using tokenizer(text)")
                self._backend = None
                return self._ids_lists(texts)
        return ids

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat token ids (in the dataset dtype) and per-document lengths (EOD included)."""
        ids = self._ids_lists(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
        if self.append_eod:
            nonempty = lengths > 0
            flat = np.insert(flat, np.cumsum(lengths)[nonempty], self.eod)
            lengths = lengths + nonempty
        if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise PreprocessError(
                f"--tokenizer-name-or-path {self.path}: token id {int(flat.max())} does not fit "
                f"{self.dtype} (vocabulary size {self.vocab_size}); the tokenizer's ids exceed its length"
            )
        return flat.astype(self.dtype), lengths
