"""Fixtures for the data tests: small HF tokenizer folders built offline, and sample rows."""

from __future__ import annotations

import pytest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Megatron datasets hold tokens in a .bin file and offsets in an .idx file.",
    "Ünïcödé text, emoji 🙂 and 中文字符 must survive tokenization.",
    'Quotes "double" and \'single\', commas, and a backslash \\ too.',
    "Line one\nline two\r\nline three",
]

# Rows used across formats: non-ASCII, embedded newlines, quotes, commas, an empty document.
ROWS = [
    {"text": "Hello world, this is the first document.", "other": "a"},
    {"text": "Ünïcödé: café, naïve, 中文, emoji 🙂.", "other": "b"},
    {"text": "Line one\nline two\n\nline four after a blank line", "other": ""},
    {"text": 'She said "hi", then \'bye\'; a,b,c', "other": "d"},
    {"text": "", "other": "e"},
    {"text": "   leading and trailing spaces   ", "other": "f"},
    {"text": "tab\tseparated\tvalues and a backslash \\", "other": "g"},
    {"text": "The quick brown fox jumps over the lazy dog. " * 20, "other": "h"},
]


def build_bpe_tokenizer(
    folder, vocab_size: int = 400, eos: bool = True, bos: bool = False, nfc: bool = False
) -> str:
    """Train a byte-level BPE on SENTENCES and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if nfc:  # as Qwen2's tokenizer.json has
        from tokenizers import normalizers

        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([s for row in ROWS for s in row.values()] + SENTENCES * 3, trainer)
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    kwargs = {"eos_token": "<|endoftext|>"} if eos else {}
    if bos:
        kwargs["bos_token"] = "<s>"
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    hf.save_pretrained(str(folder))
    return str(folder)


def build_large_vocab_tokenizer(folder, vocab_size: int = 70000) -> str:
    """A WordLevel tokenizer with vocab_size entries (>= 65500 forces int32 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    words = sorted({w for row in ROWS for w in row["text"].split()})
    for w in words:
        vocab.setdefault(w, len(vocab))
    # Put the real words at the top of the id range so ids above 65535 appear in the data.
    vocab = {w: (vocab_size - 1 - i if i >= 2 else i) for w, i in vocab.items()}
    filler = 2
    used = set(vocab.values())
    while len(vocab) < vocab_size:
        while filler in used:
            filler += 1
        vocab[f"w{filler}"] = filler
        used.add(filler)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    hf.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory) -> str:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bpe_tok"))


@pytest.fixture(scope="session")
def bos_tokenizer(tmp_path_factory) -> str:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bos_tok"), bos=True)


@pytest.fixture(scope="session")
def no_eos_tokenizer(tmp_path_factory) -> str:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("noeos_tok"), eos=False)


@pytest.fixture(scope="session")
def nfc_tokenizer(tmp_path_factory) -> str:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("nfc_tok"), nfc=True)


@pytest.fixture(scope="session")
def large_vocab_tokenizer(tmp_path_factory) -> str:
    return build_large_vocab_tokenizer(tmp_path_factory.mktemp("large_tok"))


def build_silent_tokenizer(folder) -> str:
    """A BPE tokenizer whose vocabulary holds only its EOS and that has no unknown token: every text -> []."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"<eos>": 0}, merges=[]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def silent_tokenizer(tmp_path_factory) -> str:
    return build_silent_tokenizer(tmp_path_factory.mktemp("silent_tok"))
