"""Tiny random mixture-of-experts HF models (Qwen3-MoE, Qwen2-MoE, Mixtral) made by transformers, with the
key sets of real checkpoints (tests/fixtures/hf_configs) scaled down.

``make_moe_hf_model(folder, kind, ...)`` saves one (safetensors and a word-level tokenizer) and returns the
folder; ``fused=True`` saves the experts as transformers 5 holds them (``mlp.experts.gate_up_proj``) instead
of the hub's per-expert tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.helpers.paths import HF_CONFIG_FIXTURES
from tests.helpers.tiny import save_word_tokenizer

MOE_BASE = {
    "qwen3_moe": "qwen3-30b-a3b.json",
    "qwen2_moe": "qwen1.5-moe-a2.7b.json",
    "mixtral": "mixtral-8x7b-v0.1.json",
}


def tiny_moe_config(kind: str, *, num_layers: int = 2, num_experts: int = 4, vocab_size: int = 128,
                    **changes) -> dict:
    """A real MoE model's config.json scaled down: hidden 32, 4 heads / 2 groups, experts of 16 (Mixtral: of
    its intermediate size 24), top-2, Qwen2-MoE's shared expert 24."""
    cfg = json.loads((HF_CONFIG_FIXTURES / MOE_BASE[kind]).read_text(encoding="utf-8"))
    cfg.update(hidden_size=32, intermediate_size=24, num_hidden_layers=num_layers, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256, bos_token_id=1,
               eos_token_id=2, num_experts_per_tok=2)
    cfg["num_local_experts" if kind == "mixtral" else "num_experts"] = num_experts
    if kind != "mixtral":
        cfg.update(moe_intermediate_size=16, max_window_layers=num_layers)
    if kind == "qwen3_moe":
        cfg["head_dim"] = 16  # not hidden / heads (8), as in Qwen3
    if kind == "qwen2_moe":
        cfg.update(shared_expert_intermediate_size=24, sliding_window=256)
    cfg.update(changes)
    return cfg


def make_moe_hf_model(folder: str | Path, kind: str = "qwen3_moe", *, seed: int = 0, fused: bool = False,
                      dtype: torch.dtype = torch.float32, initializer_range: float = 0.2, **changes) -> Path:
    """A random ``kind`` model built by transformers and saved in ``folder`` (with a tokenizer); returns it.

    Norms and biases random too (a mix-up shows); ``initializer_range`` 0.2: routing far from uniform.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_moe_config(kind, **changes)
    cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    cfg["initializer_range"] = initializer_range
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "transformers_version"})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    model = model.to(dtype)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True, save_original_format=not fused)
    if not fused:  # the hub's config.json names (transformers 5 writes Qwen3-MoE's num_experts otherwise)
        saved = json.loads((folder / "config.json").read_text())
        if kind == "qwen3_moe" and "num_local_experts" in saved:
            saved["num_experts"] = saved.pop("num_local_experts")
            (folder / "config.json").write_text(json.dumps(saved, indent=2))
    save_word_tokenizer(folder, cfg["vocab_size"])
    return folder
