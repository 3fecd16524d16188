"""Tiny random models: HF models made by transformers (safetensors, a word-level tokenizer beside them),
and their Megatron checkpoints converted by convert_ckpt.py's library function.

:func:`make_tiny_hf_model` builds one; :func:`tiny_checkpoints` builds one and converts it to several
TP/PP layouts (the e2e and inference tests' module fixtures); :func:`save_word_tokenizer` writes the
tokenizer alone.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import torch

from tests.helpers.paths import HF_CONFIG_FIXTURES

# Real key sets (tests/fixtures/hf_configs), scaled down.
_BASE = {
    "qwen2": "qwen2.5-7b.json",
    "qwen2_tied": "qwen2.5-0.5b.json",
    "llama": "llama-3-8b.json",
    "mistral": "mistral-7b-v0.1.json",
    "qwen3": "qwen3-8b.json",  # untied
    "qwen3_tied": "qwen3-0.6b.json",
}


def tiny_hf_config(kind: str = "qwen2", *, vocab_size: int = 128, num_layers: int = 4, **changes) -> dict:
    """A real model's config.json, scaled down (GQA 4 heads / 2 groups, hidden 64)."""
    cfg = json.loads((HF_CONFIG_FIXTURES / _BASE[kind]).read_text(encoding="utf-8"))
    cfg.update(hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2)
    for key in ("max_window_layers",):
        if key in cfg:
            cfg[key] = num_layers
    if cfg.get("sliding_window") is not None:
        cfg["sliding_window"] = 256
    if "head_dim" in cfg:  # Qwen3: head_dim (32) is not hidden / heads (16), as in Qwen3-0.6B
        cfg["head_dim"] = 32
    cfg.update(changes)
    return cfg


def save_word_tokenizer(folder: str | Path, num_words: int, specials: tuple[str, ...] = ()) -> None:
    """A word-level tokenizer in ``folder``: ``<unk>``, ``<s>``, ``</s>``, w3 .. w{num_words - 1}, then
    ``specials``.

    Next to a Qwen config.json, transformers 5 loads a tokenizer folder as Qwen's BPE tokenizer: inference
    tests keep theirs in a folder of its own.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, num_words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"additional_special_tokens": list(specials)} if specials else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   **extra)
    fast.save_pretrained(str(folder))


def make_tiny_hf_model(folder: str, kind: str = "qwen2", *, dtype: torch.dtype = torch.float32, seed: int = 0,
                       tokenizer_tokens: int | None = None, max_shard_size: str | None = None, **cfg_changes):
    """Build a random HF model with transformers, save it (safetensors) with a tokenizer; return the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = tiny_hf_config(kind, **cfg_changes)
    cfg_dict["torch_dtype"] = str(dtype).replace("torch.", "")
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type,
                                  **{k: v for k, v in cfg_dict.items() if k != "transformers_version"})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at 1: make them random so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    model = model.to(dtype)
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(folder, **kwargs)
    save_word_tokenizer(folder, tokenizer_tokens or cfg_dict["vocab_size"])
    return load_hf_model(folder)


def load_hf_model(folder: str, dtype: torch.dtype = torch.float32):
    """The reference: transformers' model as loaded from ``folder`` (eager attention, eval mode)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()


def make_hf_model(folder: Path, kind: str = "qwen2", dtype: torch.dtype = torch.float32, num_layers: int = 4,
                  **kwargs) -> Path:
    """:func:`make_tiny_hf_model` in ``folder``; returns the folder."""
    make_tiny_hf_model(str(folder), kind, dtype=dtype, num_layers=num_layers, **kwargs)
    return folder


def convert_hf_to_mg(hf_dir: Path, save_dir: Path, tp: int = 1, pp: int = 1, **extra) -> Path:
    """convert_ckpt.py hf -> mg (in this process, through its library function)."""
    from mindspeed_llm.convert.convert import ConvertOptions, convert

    cfg = json.loads((hf_dir / "config.json").read_text())
    qkv_bias = cfg["architectures"][0] == "Qwen2ForCausalLM"
    convert(ConvertOptions(load_model_type="hf", save_model_type="mg", load_dir=str(hf_dir),
                           save_dir=str(save_dir), target_tp=tp, target_pp=pp, add_qkv_bias=qkv_bias,
                           progress=False, **extra))
    return save_dir


def tiny_checkpoints(root: Path, layouts: Mapping[Hashable, tuple[int, int]] | Iterable[tuple[int, int]], *,
                     kind: str = "qwen2", **model) -> tuple[Path, dict]:
    """A tiny HF model in ``root/hf`` (:func:`make_hf_model` with ``kind`` and ``model``) and its conversions.

    ``layouts``: ``{name: (TP, PP)}``, or ``(TP, PP)`` pairs that name themselves; each layout is converted
    once, to ``root/mg_tp<TP>pp<PP>``. Returns ``(HF folder, {name: checkpoint folder})``.
    """
    named = dict(layouts) if isinstance(layouts, Mapping) else {layout: layout for layout in layouts}
    hf = make_hf_model(root / "hf", kind, **model)
    folders = {(tp, pp): convert_hf_to_mg(hf, root / f"mg_tp{tp}pp{pp}", tp, pp)
               for tp, pp in dict.fromkeys(named.values())}
    return hf, {name: folders[tuple(layout)] for name, layout in named.items()}
