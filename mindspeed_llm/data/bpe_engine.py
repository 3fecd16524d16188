"""The fast encoding engine for byte-level BPE tokenizers (``--tokenizer-engine auto``): tiktoken's BPE, where
it gives exactly the ids of HF ``tokenizers``.

tiktoken splits a text with the tokenizer's own pre-tokenizer regex and runs rank-BPE on each piece's bytes:
a pair of adjacent parts merges when their concatenation is a token, lowest rank first (a piece that is a
whole token is that token). HF's BPE merges a pair when the pair is listed in ``merges``, lowest index
first. With rank(a+b) = the index of the merge (a, b) (single bytes below all merges) the two agree when
every merge (a, b) -> c is the split that rank-BPE itself reaches on c's bytes with the lower ranks alone,
and each token comes from one merge (:func:`rank_condition_failure`, checked once per run by the main
process). tiktoken then needs about a fifth of the CPU time per MiB (0.12 against 0.61 s on Qwen2.5's).

Eligible (:func:`read_tables`, else the HF backend encodes as before, with one line saying why): model BPE
without dropout, unk token or byte fallback and without a continuing-subword prefix or end-of-word suffix;
normalizer none or NFC (texts that NFC may change go through HF's own normalizer first); pre-tokenizer
Split(Regex, Isolated) + ByteLevel(use_regex=False), or ByteLevel(use_regex=True) (GPT-2's regex), without
add_prefix_space; a post-processor that adds a fixed prefix/suffix for a single text (read off HF's own).
Per document, the HF backend encodes instead: a text holding an added token's content (HF splits those
out), and a text whose tokens do not spell all of its bytes (a regex that leaves characters unmatched).

Checks against the HF backend (the caller's reference): probe texts (Unicode classes, NFC, CJK, emoji,
``\\r\\n``, whitespace runs, contractions) when the engine is built, and every ``SAMPLE_EVERY``-th document of
every batch; a difference there is reported (:attr:`FastBPE.mismatch`) for the caller to redo the whole
output with the HF backend.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ENGINES = ("auto", "hf")
SAMPLE_EVERY = 32  # one document in this many is also encoded by the HF backend and compared

# A character at or beyond U+0300: below it no character changes under NFC and none is a combining mark or
# otherwise composes with a neighbour (the first combining marks, the first composition exclusions and
# Hangul's jamo all lie beyond), so a text of such characters alone is its own NFC in every Unicode version.
MAY_CHANGE_UNDER_NFC = re.compile("[^\x00-\u02ff]")

# GPT-2's pre-tokenizer regex (ByteLevel with use_regex=True).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts encoded by both engines when the engine is built: letters, marks and digits of many scripts, NFC
# changes, CJK, emoji (with joiners and modifiers), control and odd whitespace, contractions in both cases.
PROBE_TEXTS = (
    "Hello, World! It's 2026; we're DON'T I'LL SHE'D you'VE they'Re I'M ſ'S 'ſ ﬆ'st K'k",
    "  leading spaces\tand\ttabs\r\n\r\nCRLF\n\n\n   \n trailing   ",
    "e\u0301 A\u030a \u212b \u1e9b\u0323 \uac00\u11a8 \u1100\u1161\u11a8 \u0958 \ufb2c",
    "中文文本，日本語のテキスト、한국어 텍스트。 𠀋𡈽𡌛 ⅫⅣ ①② ٣٤٥ ১২৩ 一二三 3.14159 1e-9 123456789",
    "emoji 👩\u200d👩\u200d👧\u200d👦 👍🏽 🇫🇷 ☺\ufe0f x\u200by\u00a0z\u2028w\u3000v\u0085u\x0bt\x0cs",
    "def f(x):\n    return x**2  # ünïcödé\n\tif a != b: print(\"{'k': [1, 2]}\")\n" + " " * 40 + "end",
    "Ελληνικά Кириллица עברית العربية हिन्दी ภาษาไทย ქართული Ꭰꭰ 𐐀𐐨 ǅǆ İı ß ẞ",
    "",
)


class Ineligible(Exception):
    """The tokenizer is not one this engine encodes exactly; the message says why."""


def byte_chars() -> dict[int, str]:
    """Byte-level BPE's alphabet: each byte's character in the vocabulary (the printable bytes themselves,
    the others shifted to U+0100 and beyond in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return chars


_BYTE_CHARS = byte_chars()
_TO_LATIN1 = str.maketrans({ch: chr(b) for b, ch in _BYTE_CHARS.items()})


def _token_bytes(token: str) -> bytes:
    return token.translate(_TO_LATIN1).encode("latin-1")


@dataclass(frozen=True)
class BPETables:
    """What the engine needs from a tokenizer.json: the regex, the ranks and how ranks map to ids."""

    pattern: str
    nfc: bool
    ranks: dict[bytes, int]  # single bytes: 0-255; the merge of index i: 256 + i
    merges: tuple[tuple[bytes, bytes], ...]
    rank_ids: np.ndarray | None  # rank -> vocabulary id, None where they are equal
    added: tuple[str, ...]  # added tokens' contents (a text holding one goes to the HF backend)


def _pattern(pre: Any) -> str:
    def byte_level(node: Any, use_regex: bool) -> bool:
        return (isinstance(node, dict) and node.get("type") == "ByteLevel"
                and bool(node.get("use_regex", True)) == use_regex and not node.get("add_prefix_space"))

    if byte_level(pre, True):
        return GPT2_PATTERN
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if len(parts) == 1 and byte_level(parts[0], True):
            return GPT2_PATTERN
        if len(parts) == 2 and byte_level(parts[1], False):
            split = parts[0]
            isolated = split.get("type") == "Split" and split.get("behavior") == "Isolated"
            if (isolated and not split.get("invert") and isinstance(split.get("pattern"), dict)
                    and "Regex" in split["pattern"]):
                return split["pattern"]["Regex"]
    raise Ineligible("its pre-tokenizer is not Split(Regex, Isolated) + ByteLevel or ByteLevel with GPT-2's "
                     f"regex (it is {_kind(pre)})")


def _kind(node: Any) -> str:
    if not isinstance(node, dict):
        return "none"
    if node.get("type") == "Sequence":
        inner = node.get("pretokenizers") or node.get("normalizers") or []
        return "Sequence[" + ", ".join(_kind(n) for n in inner) + "]"
    return str(node.get("type"))


def read_tables(data: dict) -> BPETables:
    """The engine's tables from a parsed tokenizer.json; raises Ineligible naming what does not fit."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise Ineligible(f"its model is {model.get('type')}, not BPE")
    for key, bad in (("dropout", model.get("dropout") not in (None, 0, 0.0)),
                     ("unk_token", model.get("unk_token") is not None),
                     ("byte_fallback", bool(model.get("byte_fallback"))),
                     ("continuing_subword_prefix", bool(model.get("continuing_subword_prefix"))),
                     ("end_of_word_suffix", bool(model.get("end_of_word_suffix")))):
        if bad:
            raise Ineligible(f"its BPE model sets {key} ({model.get(key)!r})")
    norm = data.get("normalizer")
    if norm is not None and norm != {"type": "NFC"}:
        raise Ineligible(f"its normalizer is {_kind(norm)} (only none or NFC)")
    pattern = _pattern(data.get("pre_tokenizer"))
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = model.get("merges") or []
    if not set("".join(vocab)) <= set(_BYTE_CHARS.values()):
        raise Ineligible("its vocabulary is not byte-level (characters outside the 256 byte characters)")
    ranks: dict[bytes, int] = {}
    ids = np.empty(256 + len(merges), dtype=np.int64)
    for b, ch in _BYTE_CHARS.items():
        if ch not in vocab:
            raise Ineligible(f"its vocabulary lacks the byte {b:#04x}")
        ranks[bytes([b])] = b
        ids[b] = vocab[ch]
    pairs = []
    for i, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        token = left + right
        if token not in vocab:
            raise Ineligible(f"its merge {left!r} {right!r} makes {token!r}, which is not in the vocabulary")
        pair = (_token_bytes(left), _token_bytes(right))
        whole = pair[0] + pair[1]
        if whole in ranks:
            raise Ineligible(f"two merges make the token {token!r} (rank-BPE needs one)")
        ranks[whole] = 256 + i
        ids[256 + i] = vocab[token]
        pairs.append(pair)
    added = tuple(t["content"] for t in data.get("added_tokens") or [] if t.get("content"))
    unreachable = set(vocab.values()) - set(ids.tolist()) - {t["id"] for t in data.get("added_tokens") or []}
    if unreachable and model.get("ignore_merges"):
        raise Ineligible(f"with ignore_merges, its {len(unreachable)} vocabulary entries that no merge makes "
                         "would be found whole")
    identity = bool(np.array_equal(ids, np.arange(ids.size)))
    return BPETables(pattern=pattern, nfc=norm is not None, ranks=ranks, merges=tuple(pairs),
                     rank_ids=None if identity else ids, added=added)


def rank_condition_failure(tables: BPETables) -> str | None:
    """None when every merge (a, b) -> c is the split rank-BPE reaches on c's bytes with the ranks below
    c's; else the first merge that is not (then tiktoken's BPE could give other ids than HF's).

    About 2 CPU s for Qwen2.5's 151,387 merges (measured on this project's 2-core EPYC)."""
    get = tables.ranks.get
    never = 1 << 62
    for i, (left, right) in enumerate(tables.merges):
        if len(left) + len(right) > 2 and _bpe_below(left + right, 256 + i, get, never) != [left, right]:
            shown = (left + right).decode("utf-8", errors="backslashreplace")
            return f"merge {i} ({shown!r}) is not the split that rank-BPE reaches with the lower ranks"
    return None


def _bpe_below(piece: bytes, limit: int, get: Callable, never: int) -> list[bytes]:
    """Rank-BPE on ``piece`` with the ranks below ``limit`` alone."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    pair_ranks = [get(parts[i] + parts[i + 1], never) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best >= limit:
            break
        i = pair_ranks.index(best)
        merged = parts[i] + parts[i + 1]
        parts[i:i + 2] = [merged]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = get(merged + parts[i + 1], never)
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + merged, never)
    return parts


class FastBPE:
    """tiktoken's encoding of a byte-level BPE tokenizer, with the HF backend for the documents it leaves.

    ``backend``: the ``tokenizers.Tokenizer`` (set up as the caller encodes: no truncation or padding); its
    post-processor's prefix/suffix and normalizer are used, and the probe texts are checked against it."""

    def __init__(self, tables: BPETables, backend: Any, threads: int = 1) -> None:
        import tiktoken

        self.threads = max(1, threads)
        self._pool = None
        self.encoding = tiktoken.Encoding("mindspeed_llm_bpe", pat_str=tables.pattern,
                                          mergeable_ranks=tables.ranks, special_tokens={})
        self.rank_ids = tables.rank_ids
        self.rank_bytes = np.zeros(len(tables.ranks), dtype=np.int64)
        for token, rank in tables.ranks.items():
            self.rank_bytes[rank] = len(token)
        self.normalizer = backend.normalizer if tables.nfc else None
        contents = sorted(set(tables.added), key=len, reverse=True)
        self.added = re.compile("|".join(map(re.escape, contents))) if contents else None
        self.prefix, self.suffix = _fixed_ends(backend)
        self.mismatch: str | None = None
        probes = list(PROBE_TEXTS)
        expected = [enc.ids for enc in backend.encode_batch(probes)]
        flat, lengths = self.encode(probes, lambda texts: [backend.encode(t).ids for t in texts])
        ends = np.cumsum(lengths)
        for text, want, end, n in zip(probes, expected, ends, lengths):
            if flat[end - n:end].tolist() != want:
                raise Ineligible(f"its ids differ from HF's on the probe text {text[:24]!r}... (its regex "
                                 "means something else to tiktoken)")
        self.mismatch = None

    def _normalized(self, text: str) -> str:
        if self.normalizer is None or text.isascii() or MAY_CHANGE_UNDER_NFC.search(text) is None:
            return text
        return self.normalizer.normalize_str(text)

    def _encode_part(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """tiktoken's ranks and the UTF-8 size of each text (-1: a text with an added token's content, for
        the HF backend). tiktoken lets other threads run while it encodes."""
        encode = self.encoding.encode_ordinary
        per_doc: list[list[int]] = []
        sizes: list[int] = []
        for text in texts:
            normalized = self._normalized(text)
            if self.added is not None and (self.added.search(text) or
                                           (normalized is not text and self.added.search(normalized))):
                per_doc.append([])
                sizes.append(-1)
                continue
            sizes.append(len(normalized) if normalized.isascii() else len(normalized.encode("utf-8")))
            per_doc.append(encode(normalized))
        return per_doc, sizes

    def encode(self, texts: list[str], hf_ids: Callable[[list[str]], list[list[int]]]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids and per-document lengths of ``texts``, as ``hf_ids`` (the HF backend) gives them."""
        per_doc: list[list[int]] = []
        sizes: list[int] = []
        if self.threads > 1 and len(texts) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bpe")
            step = -(-len(texts) // (4 * self.threads))
            for part_ids, part_sizes in self._pool.map(self._encode_part, (
                    texts[i:i + step] for i in range(0, len(texts), step))):
                per_doc.extend(part_ids)
                sizes.extend(part_sizes)
        else:
            per_doc, sizes = self._encode_part(texts)
        to_hf = [i for i, size in enumerate(sizes) if size < 0]
        lengths = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
        flat = np.fromiter(itertools.chain.from_iterable(per_doc), dtype=np.int64, count=int(lengths.sum()))
        ends = np.cumsum(lengths)
        spelled = np.concatenate(([0], np.cumsum(self.rank_bytes[flat])))
        unspelled = np.flatnonzero(spelled[ends] - spelled[ends - lengths] != np.maximum(sizes, 0))
        to_hf = sorted(set(to_hf) | set(unspelled.tolist()))
        if self.rank_ids is not None:
            flat = self.rank_ids[flat]
        left = set(to_hf)
        sampled = [i for i in range(0, len(texts), SAMPLE_EVERY) if i not in left]
        if not to_hf and not self.prefix and not self.suffix:
            self._check(texts, sampled, flat, lengths, ends, hf_ids)
            return flat, lengths
        hf = dict(zip(to_hf, hf_ids([texts[i] for i in to_hf]))) if to_hf else {}
        pieces = []
        ends_list = ends.tolist()
        fixed_prefix = np.asarray(self.prefix, dtype=np.int64)
        fixed_suffix = np.asarray(self.suffix, dtype=np.int64)
        for i, (end, n) in enumerate(zip(ends_list, lengths.tolist())):
            if i in hf:
                pieces.append(np.asarray(hf[i], dtype=np.int64))
            else:
                pieces.extend((fixed_prefix, flat[end - n:end], fixed_suffix))
        out_lengths = lengths + len(self.prefix) + len(self.suffix)
        for i, ids in hf.items():
            out_lengths[i] = len(ids)
        out = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        self._check(texts, sampled, out, out_lengths, np.cumsum(out_lengths), hf_ids)
        return out, out_lengths

    def _check(self, texts: list[str], sampled: list[int], flat: np.ndarray, lengths: np.ndarray,
               ends: np.ndarray, hf_ids: Callable[[list[str]], list[list[int]]]) -> None:
        if not sampled or self.mismatch is not None:
            return
        for i, expected in zip(sampled, hf_ids([texts[i] for i in sampled])):
            got = flat[ends[i] - lengths[i]:ends[i]]
            if got.tolist() != expected:
                self.mismatch = (f"a sampled document ({len(texts[i])} characters, starting "
                                 f"{texts[i][:30]!r}) got other ids than HF's")
                return


def _fixed_ends(backend: Any) -> tuple[list[int], list[int]]:
    """The ids the post-processor puts before and after a single text's, read off HF's own encodings; raises
    Ineligible when they are not the same around every probe."""
    found = None
    for probe in ("a", "Hello world", "x = 1\n"):
        full = backend.encode(probe).ids
        core = backend.encode(probe, add_special_tokens=False).ids
        extra = len(full) - len(core)
        options = {(tuple(full[:k]), tuple(full[k + len(core):])) for k in range(extra + 1)
                   if extra >= 0 and full[k:k + len(core)] == core}
        found = options if found is None else found & options
    if not found or len(found) != 1:
        raise Ineligible("its post-processor does not add a fixed prefix/suffix to a single text")
    prefix, suffix = next(iter(found))
    if backend.encode("").ids != [*prefix, *suffix]:
        raise Ineligible("its post-processor treats an empty text differently")
    return list(prefix), list(suffix)


def tiktoken_available() -> bool:
    """Whether tiktoken can be imported (it is an optional dependency)."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def build(json_text: str, backend: Any, threads: int = 1) -> tuple[FastBPE | None, str]:
    """The engine for a serialized tokenizer, or None and why not (tiktoken missing, not eligible);
    ``threads``: how many threads may encode a batch's documents."""
    if not tiktoken_available():
        return None, ("tiktoken is not installed (pip install tiktoken: the same ids in about a fifth of the "
                      "time)")
    import json

    try:
        return FastBPE(read_tables(json.loads(json_text)), backend, threads), "tiktoken"
    except Ineligible as exc:
        return None, f"not for this tokenizer: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything tiktoken refuses: the HF backend encodes
        return None, f"tiktoken could not take this tokenizer ({type(exc).__name__}: {exc})"
