"""The fast BPE engine (``--tokenizer-engine auto``): HF's ids exactly, or HF's backend."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from mindspeed_llm.data import bpe_engine
from mindspeed_llm.data.tokenizer import speculative_spec
from tests.data.helpers import dataset_bytes, expected_documents, read_documents, run, write_jsonl

pytest.importorskip("tiktoken")

# Texts HF's pipeline treats specially: NFC changes, combining marks, CJK, emoji, CRLF, whitespace runs,
# numbers, contractions in upper case, added tokens' contents inside text.
HOSTILE = [
    "e\u0301cole cafe\u0301 A\u030a \u212b \u1e9b\u0323 \uac00\u11a8 \u1100\u1161\u11a8 e\u0301e\u0301",
    "combining: a\u0300\u0301\u0302 x\u0338 \u0915\u093c \u0958 o\u0308\u0304",
    "中文文本，日本語のテキスト、한국어 텍스트。 𠀋𡈽𡌛 漢字かな交じり文",
    "emoji 👩\u200d👩\u200d👧\u200d👦 👍🏽 🇫🇷 ☺\ufe0f 🙂🙂🙂",
    "line one\r\nline two\r\n\r\n\nlast \r\n",
    " " * 50 + "x" + "\t" * 20 + "y\n\n\n\n\n" + " " * 7,
    "numbers 1234567890 3.14159 1e-9 ٣٤٥ ⅫⅣ ① 00007",
    "IT'S DON'T I'LL WE'VE SHE'D THEY'RE I'M it's we're You'Ll",
    "special <|endoftext|> inside <|im_start|>user\nhi<|im_end|> and <s> too",
    "",
    "ſ'S 'ſ ß ẞ İı K ǅ",
    "def f(x):\n    return {'k': [x ** 2, \"s\"]}  # comment\n",
]
SPECIAL = {i for i, t in enumerate(HOSTILE) if "<|" in t or "<s>" in t}


def _encoder(path: str, threads: int = 1):
    """A worker's encoder for a tokenizer folder's tokenizer.json, with the engine asked for."""
    return dataclasses.replace(speculative_spec(path), engine="auto").build(threads)


def _raw(fast, text: str) -> list[int]:
    """tiktoken's ids for a text without the engine's normalizing, routing or ends."""
    ranks = fast.encoding.encode_ordinary(text)
    return ranks if fast.rank_ids is None else fast.rank_ids[ranks].tolist()


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(lengths)
    return [flat[e - n:e].tolist() for e, n in zip(ends, lengths)]


@pytest.fixture(scope="module", params=["qwen25", "gpt2_tiny", "gpt2_tiny_bos", "gpt2_tiny_nfc"])
def tokenizer_folder(request) -> str:
    name = {"qwen25": "qwen25_tokenizer", "gpt2_tiny": "bpe_tokenizer", "gpt2_tiny_bos": "bos_tokenizer",
            "gpt2_tiny_nfc": "nfc_tokenizer"}[request.param]
    return request.getfixturevalue(name)


def test_ids_equal_hf_on_hostile_texts(tokenizer_folder):
    hf = AutoTokenizer.from_pretrained(tokenizer_folder)
    encoder = _encoder(tokenizer_folder)
    assert encoder.engine == "tiktoken", encoder.engine_note
    texts = HOSTILE * 3  # sampled documents (every 32nd) among them
    asked: list[str] = []

    def hf_ids(batch):
        asked.extend(batch)
        return encoder.ids(batch)

    flat, lengths = encoder.fast.encode(texts, hf_ids)
    assert _split(flat, lengths) == [hf(t).input_ids for t in texts]
    assert encoder.fast.mismatch is None
    # The engine itself encoded every text but those with added tokens' contents (and the sampled ones).
    sampled = {texts[i] for i in range(0, len(texts), bpe_engine.SAMPLE_EVERY)}
    assert set(asked) == {HOSTILE[i] for i in SPECIAL} | sampled
    # Teeth: without HF's normalizer, or with tiktoken on the added tokens' contents, the ids differ.
    def raw(text):
        return _raw(encoder.fast, text)

    if encoder.fast.normalizer is not None:
        assert raw(HOSTILE[0]) != hf(HOSTILE[0], add_special_tokens=False).input_ids
    assert raw(HOSTILE[8]) != hf(HOSTILE[8], add_special_tokens=False).input_ids


def test_threads_give_the_same_ids(nfc_tokenizer):
    """A worker with cores to spare (``--workers 1`` on two) encodes a batch's documents in that many
    threads: the same ids, in order."""
    hf = AutoTokenizer.from_pretrained(nfc_tokenizer)
    encoder = _encoder(nfc_tokenizer, threads=2)
    assert encoder.fast.threads == 2
    texts = HOSTILE * 4
    assert _split(*encoder.flat_ids(texts)) == [hf(t).input_ids for t in texts]


def _byte_level_tokenizer(folder, merges: list[tuple[str, str]], pattern: str | None = None) -> str:
    """A byte-level BPE with the given merges (their results added to the vocabulary) and an EOS."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(folder))
    return str(folder)


def _preprocess(tmp_path, tokenizer: str, texts: list[str], engine: str, capfd) -> tuple[str, tuple]:
    src = write_jsonl([{"text": t} for t in texts], str(tmp_path / f"in_{engine}"))
    prefix = tmp_path / f"out_{engine}"
    capfd.readouterr()
    assert run("--input", src, "--tokenizer-name-or-path", tokenizer, "--output-prefix", prefix,
               "--workers", 2, "--append-eod", "--tokenizer-engine", engine) == 0
    return capfd.readouterr().err, dataset_bytes(f"{prefix}_text_document")


def test_output_identical_to_hf_engine(tmp_path, nfc_tokenizer, capfd):
    texts = HOSTILE * 5
    err, fast = _preprocess(tmp_path, nfc_tokenizer, texts, "auto", capfd)
    assert "tokenizer engine: tiktoken" in err
    err_hf, reference = _preprocess(tmp_path, nfc_tokenizer, texts, "hf", capfd)
    assert "tokenizer engine" not in err_hf
    assert fast == reference
    hf = AutoTokenizer.from_pretrained(nfc_tokenizer)
    assert read_documents(str(tmp_path / "out_auto_text_document")) == expected_documents(hf, texts, True)


def test_merges_against_rank_order_fall_back(tmp_path, capfd):
    """merges (b c), (a b), (ab c): HF's BPE turns "abc" into [a, bc]; rank-BPE would take "abc" whole."""
    folder = _byte_level_tokenizer(tmp_path / "tok", [("b", "c"), ("a", "b"), ("ab", "c")])
    tables = bpe_engine.read_tables(json.loads((tmp_path / "tok" / "tokenizer.json").read_text()))
    assert "merge 2 ('abc')" in bpe_engine.rank_condition_failure(tables)
    hf = AutoTokenizer.from_pretrained(folder)
    texts = ["abc abc", "xabcx ab bc", "plain"]
    # Teeth: the engine forced on this tokenizer gives other ids than HF's.
    forced = _encoder(folder).fast
    assert forced is not None  # the probe texts do not meet the difference: the rank check must
    assert _split(*forced.encode(texts, lambda batch: [hf(t).input_ids for t in batch]))[0] != hf(
        texts[0]).input_ids
    err, fast = _preprocess(tmp_path, folder, texts, "auto", capfd)
    assert "tokenizer engine: HF tokenizers, not tiktoken: merge 2" in err
    assert fast == _preprocess(tmp_path, folder, texts, "hf", capfd)[1]
    assert read_documents(str(tmp_path / "out_auto_text_document")) == expected_documents(hf, texts, True)


def test_sampled_difference_reruns_with_hf(tmp_path, capfd):
    """A regex that Oniguruma (HF) and tiktoken read differently on text the probes lack: "(?i:ss)" matches
    "ß" for HF only. The 33rd document (sampled, past the first-batch check) differs: all output again."""
    pattern = r"(?i:ss)x|."
    folder = _byte_level_tokenizer(tmp_path / "tok", [("Ã", "Ł"), ("ÃŁ", "x")], pattern=pattern)
    hf = AutoTokenizer.from_pretrained(folder)
    texts = ["plain words here"] * 32 + ["aßx", "line\nbreak"] + ["more"] * 10
    forced = _encoder(folder).fast
    assert _raw(forced, "aßx") != hf("aßx").input_ids  # teeth
    # A newline matches nothing in this regex: tiktoken would drop it, so that document goes to HF.
    assert _raw(forced, "line\nbreak") != hf("line\nbreak").input_ids
    assert _split(*forced.encode(["line\nbreak"] * 2, lambda b: [hf(t).input_ids for t in b]))[1] == hf(
        "line\nbreak").input_ids
    err, fast = _preprocess(tmp_path, folder, texts, "auto", capfd)
    assert "got other ids than HF's; tokenizing the whole input again with HF tokenizers" in err
    assert fast == _preprocess(tmp_path, folder, texts, "hf", capfd)[1]
    assert read_documents(str(tmp_path / "out_auto_text_document")) == expected_documents(hf, texts, True)


def test_without_tiktoken_the_hf_backend_with_one_reason(bpe_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError
    encoder = _encoder(bpe_tokenizer)
    assert (encoder.engine, encoder.fast) == ("hf", None)
    assert encoder.engine_note.startswith("tiktoken is not installed (pip install tiktoken")
    hf = AutoTokenizer.from_pretrained(bpe_tokenizer)
    assert _split(*encoder.flat_ids(HOSTILE)) == [hf(t).input_ids for t in HOSTILE]


@pytest.mark.parametrize("change, why", [
    (lambda d: d["model"].update(unk_token="<unk>"), "sets unk_token"),
    (lambda d: d["model"].update(dropout=0.1), "sets dropout"),
    (lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer is NFKC"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer is not"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer is not"),
    (lambda d: d["model"]["merges"].append(d["model"]["merges"][0]), "two merges make"),
])
def test_ineligible_tokenizers_are_named(bpe_tokenizer, change, why):
    with open(f"{bpe_tokenizer}/tokenizer.json", encoding="utf-8") as f:
        data = json.load(f)
    bpe_engine.read_tables(data)  # eligible as it is
    change(data)
    with pytest.raises(bpe_engine.Ineligible, match=why):
        bpe_engine.read_tables(data)
