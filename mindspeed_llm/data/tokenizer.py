"""The HF tokenizer wrapper: ``AutoTokenizer(text).input_ids`` per document, computed in batches.

Ids match Megatron-LM's ``HuggingFaceTokenizer`` (``tokenizer(text).input_ids``; vocabulary size
``len(tokenizer)``; EOD = the tokenizer's EOS). For fast tokenizers the batch goes straight to the
``tokenizers`` backend (``encode_batch_fast``), which is what ``PreTrainedTokenizerFast.__call__``
does internally minus building Python dicts of masks and offsets; the first batch is checked against
``tokenizer(text).input_ids`` and any difference switches to the plain call.

Tokenizer worker processes need only ``tokenizers``, not transformers (whose import pulls in torch): a
:class:`BackendSpec` says what they build their backend from. The text path starts its workers on the
folder's ``tokenizer.json`` before the main process has loaded the HF tokenizer (a *speculative* spec) and
keeps their ids only when :func:`same_encoding` finds that backend encodes as the HF tokenizer's own does.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from mindspeed_llm.data.bpe_engine import MAY_CHANGE_UNDER_NFC
from mindspeed_llm.data.errors import PreprocessError
from mindspeed_llm.data.indexed_writer import optimal_token_dtype

logger = logging.getLogger(__name__)

TOKENIZER_TYPES = ("PretrainedFromHF",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_CHECK_DOCS = 8


def check_tokenizer_path(path: str) -> None:
    """The mistakes found without loading anything: no such folder, or no tokenizer file in it."""
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


def load_hf_tokenizer(path: str) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` from local files, with errors a user can act on."""
    flag = "--tokenizer-name-or-path"
    check_tokenizer_path(path)
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
        self._backend: Any = None  # built on the first encode (the instruction path never needs it)
        self._backend_built = False
        self._checked = False

    def backend_spec(self) -> BackendSpec:
        """What a worker builds this tokenizer's encoding from: its backend serialized, or (a class that
        encodes text its own way, a slow tokenizer) the HF tokenizer itself, loaded by path."""
        if not self._encodes_with_backend():
            return BackendSpec(hf_path=self.path)
        return BackendSpec(json_text=self.hf.backend_tokenizer.to_str(),
                           encode_special_tokens=self._split_special_tokens())

    def _split_special_tokens(self) -> bool:
        return bool(getattr(self.hf, "split_special_tokens", False))

    def _encodes_with_backend(self) -> bool:
        try:
            from transformers import PreTrainedTokenizerFast
        except ImportError:  # pragma: no cover - transformers always ships it
            return False
        if not isinstance(self.hf, PreTrainedTokenizerFast):
            return False
        # a class that changes how text is encoded: use its own call
        return type(self.hf)._encode_plus is PreTrainedTokenizerFast._encode_plus

    def _fast_backend(self) -> Any:
        """A copy of the ``tokenizers`` backend set up as ``__call__`` uses it, or None."""
        if not self._encodes_with_backend():
            return None
        return self.backend_spec().build()

    def same_encoding(self, backend_json: str, encode_special_tokens: bool) -> bool:
        """Whether a ``tokenizers`` backend serialized as ``backend_json`` gives this tokenizer's ids."""
        if not self._encodes_with_backend() or encode_special_tokens != self._split_special_tokens():
            return False
        return _encoding_parts(backend_json) == _encoding_parts(self.hf.backend_tokenizer.to_str())

    def reference_ids(self, text: str) -> list[int]:
        """Ids exactly as Megatron-LM computes them for one document (without EOD)."""
        return self.hf(text).input_ids

    def _ids_lists(self, texts: list[str]) -> list[list[int]]:
        if not self._backend_built:
            self._backend_built = True
            self._backend = self._fast_backend()
        if self._backend is None:
            return self.hf(texts).input_ids if texts else []
        ids = self._backend.ids(texts)
        if not self._checked:
            self._checked = True
            sample = range(min(_CHECK_DOCS, len(texts)))
            if any(ids[i] != self.reference_ids(texts[i]) for i in sample):
                logger.warning("tokenizer backend differs from tokenizer(text); using tokenizer(text)")
                self._backend = None
                return self._ids_lists(texts)
        return ids

    def check_ids(self, texts: list[str], ids: list[list[int]]) -> bool:
        """Whether ids computed elsewhere equal ``tokenizer(text).input_ids`` on the first few texts."""
        return all(ids[i] == self.reference_ids(texts[i]) for i in range(min(_CHECK_DOCS, len(texts))))

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat token ids (in the dataset dtype) and per-document lengths (EOD included)."""
        return self.finish(*flatten_ids(self._ids_lists(texts)))

    def finish(self, flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A worker's flat ids and lengths with EOD appended to each non-empty document (``--append-eod``),
        checked against and cast to the dataset dtype."""
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


def flatten_ids(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-document id lists -> one flat array (uint32 when the ids fit, as ``tokenizers``' always do: half
    the bytes through the pipe) and per-document lengths."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and 0 <= flat.min() and flat.max() <= np.iinfo(np.uint32).max:
        flat = flat.astype(np.uint32)
    return flat, lengths


@dataclass(frozen=True)
class BackendSpec:
    """What a tokenizer worker encodes with: a ``tokenizers`` backend from a tokenizer.json file
    (``json_path``: speculative, before the HF tokenizer is loaded) or from serialized text (``json_text``),
    or else the HF tokenizer's own call, loaded by path (``hf_path``)."""

    json_path: str | None = None
    json_text: str | None = None
    encode_special_tokens: bool = False
    hf_path: str | None = None
    engine: str = "hf"  # --tokenizer-engine: "auto" encodes with the fast BPE engine where it is exact

    @property
    def speculative(self) -> bool:
        return self.json_path is not None

    def build(self, threads: int = 1) -> BackendEncoder | None:
        """The ``tokenizers.Tokenizer`` set up as ``PreTrainedTokenizerFast.__call__`` uses its own; None for
        ``hf_path``. ``threads``: the fast engine's threads (``tokenizers`` takes RAYON_NUM_THREADS)."""
        if self.hf_path is not None:
            return None
        from tokenizers import Tokenizer

        json_text = self.json_text
        if json_text is None:
            with open(self.json_path, encoding="utf-8") as f:
                json_text = f.read()
        backend = Tokenizer.from_str(json_text)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = self.encode_special_tokens
        return BackendEncoder(backend, json_text if self.engine == "auto" else None, threads)

    def json(self) -> str | None:
        """The serialized backend this spec builds from (None for ``hf_path``)."""
        if self.json_path is not None:
            with open(self.json_path, encoding="utf-8") as f:
                return f.read()
        return self.json_text


class BackendEncoder:
    """A ``tokenizers.Tokenizer``'s ids for a batch of texts (``encode_batch_fast``: no offsets).

    A backend whose normalizer is NFC alone (Qwen2's) encodes the texts that NFC leaves unchanged with the
    normalizer switched off: the same ids for about 15% less CPU time (measured on code and docs).

    ``engine_json``: the serialized backend, to encode with the fast BPE engine
    (:mod:`mindspeed_llm.data.bpe_engine`) where it applies; :attr:`engine` names the engine used and
    :attr:`engine_note` why."""

    def __init__(self, backend: Any, engine_json: str | None = None, threads: int = 1) -> None:
        from tokenizers import normalizers

        self.backend = backend
        self._nfc = backend.normalizer if isinstance(backend.normalizer, normalizers.NFC) else None
        self.fast = None
        self.engine, self.engine_note = "hf", "--tokenizer-engine hf"
        if engine_json is not None:
            from mindspeed_llm.data import bpe_engine

            self.fast, why = bpe_engine.build(engine_json, backend, threads)
            self.engine, self.engine_note = ("tiktoken", "") if self.fast is not None else ("hf", why)

    @property
    def mismatch(self) -> str | None:
        """Why the fast engine's ids differed from the HF backend's on a sampled document, if they did."""
        return None if self.fast is None else self.fast.mismatch

    def flat_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`ids` flattened: one array and per-document lengths (see :func:`flatten_ids`)."""
        if self.fast is None:
            return flatten_ids(self.ids(texts))
        flat, lengths = self.fast.encode(texts, self.ids)
        if flat.size and 0 <= flat.min() and flat.max() <= np.iinfo(np.uint32).max:
            flat = flat.astype(np.uint32)
        return flat, lengths

    def to_str(self) -> str:
        return self.backend.to_str()

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self.backend.encode_batch_fast(texts, add_special_tokens=True)]

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, as ``backend.encode(text).ids``."""
        if self._nfc is None:
            return self._encode(texts)
        unchanged = [t.isascii() or MAY_CHANGE_UNDER_NFC.search(t) is None for t in texts]
        plain = [t for t, u in zip(texts, unchanged) if u]
        if not plain:
            return self._encode(texts)
        self.backend.normalizer = None
        try:
            plain_ids = iter(self._encode(plain))
        finally:
            self.backend.normalizer = self._nfc
        if len(plain) == len(texts):
            return list(plain_ids)
        other_ids = iter(self._encode([t for t, u in zip(texts, unchanged) if not u]))
        return [next(plain_ids) if u else next(other_ids) for u in unchanged]


def speculative_spec(path: str) -> BackendSpec | None:
    """The folder's tokenizer.json, which workers may start on before the HF tokenizer is loaded; None when
    there is none (the HF tokenizer is loaded first and its backend sent)."""
    json_path = os.path.join(path, "tokenizer.json")
    return BackendSpec(json_path=json_path) if os.path.isfile(json_path) else None


# Settings of a serialized backend that do not change ids: the decoder, and ByteLevel's offset trimming.
_NOT_ENCODING = ("decoder", "truncation", "padding")


def _encoding_parts(backend_json: str) -> Any:
    """A serialized backend without the settings that only shape offsets or decoding."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "trim_offsets"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    data = json.loads(backend_json)
    return strip({k: v for k, v in data.items() if k not in _NOT_ENCODING})
