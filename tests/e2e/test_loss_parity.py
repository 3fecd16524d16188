"""The first training step's loss of pretrain_gpt.py from a converted checkpoint equals transformers' loss.

For Qwen3 (tied and untied: q/k norms, head_dim != hidden / heads), Qwen2 (qkv bias), Llama with non-default
Llama-3.1 RoPE scaling (original_max_position_embeddings 64, factor 4: megatron-core's own RotaryEmbedding
would use 8192) and Mistral, each at TP1, TP2 and PP2, fp32: the dataset is one document of seq+1 tokens,
so every sample of the run is that document and transformers' loss on it is the reference (relative 1e-5).
The Llama runs take the RoPE scaling from the checkpoint alone (TP1, TP2) and from MindSpeed's partial flags
completed by the checkpoint (PP2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.e2e.pretrain_helpers import (
    VOCAB,
    convert_hf_to_mg,
    losses,
    make_hf_model,
    model_flags,
    run_pretrain,
    train_flags,
)

pytestmark = pytest.mark.slow

SEQ = 128  # long enough that positions beyond the Llama-3.1 wavelengths (16..64) matter
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
MODELS = {
    "qwen3_untied": ("qwen3", {}),
    "qwen3_tied": ("qwen3_tied", {}),
    "qwen2": ("qwen2", {}),
    "llama31_scaled": ("llama", {"rope_scaling": LLAMA3_SCALING, "rope_theta": 10000.0}),
    "mistral": ("mistral", {"sliding_window": SEQ}),  # the window covers the sequence: full attention
}
LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
REL = 1e-5


def _document(prefix, seed: int = 0) -> tuple[str, list[int]]:
    """An indexed dataset holding one document of SEQ + 1 ids (3..VOCAB-2: no EOD, nothing masked)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    ids = np.random.default_rng(seed).integers(3, VOCAB - 1, SEQ + 1).astype(np.int64)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.add_document(torch.from_numpy(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix), ids.tolist()


def _hf_loss(folder, ids: list[int], **config_changes) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        t = torch.tensor([ids])
        return model(t, labels=t).loss.item()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss_parity")
    data, ids = _document(root / "data" / "one_document")
    out = {}
    for name, (kind, changes) in MODELS.items():
        # Weights 10x the usual init: attention far from uniform, so positions (RoPE) weigh in the loss.
        hf = make_hf_model(root / name, kind=kind, initializer_range=0.2, **changes)
        ckpts = {lay: convert_hf_to_mg(hf, root / f"{name}_{lay}", tp, pp) for lay, (tp, pp) in LAYOUTS.items()}
        out[name] = {"hf": hf, "ckpts": ckpts, "ref": _hf_loss(hf, ids)}
    return {"data": data, "ids": ids, "models": out}


def test_llama3_parameters_matter_for_this_sequence(setup):
    """Without the checkpoint's original_max_position_embeddings (Llama-3.1's 8192) the loss is another one."""
    m = setup["models"]["llama31_scaled"]
    params = {**json.loads((m["hf"] / "config.json").read_text())["rope_parameters"],
              "original_max_position_embeddings": 8192}
    other = _hf_loss(m["hf"], setup["ids"], rope_parameters=params)
    assert abs(other - m["ref"]) / m["ref"] > 100 * REL, (other, m["ref"])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_first_step_loss_equals_transformers(setup, name, layout):
    m = setup["models"][name]
    tp, pp = LAYOUTS[layout]
    flags = [*model_flags(m["hf"]), *train_flags(setup["data"], iters=1, gbs=1, seq=SEQ, lr=0.0), "--lr-warmup-iters", "0"]
    if name == "llama31_scaled" and layout == "pp2":  # MindSpeed's flags; the rest comes from the checkpoint
        flags += ["--rope-scaling-type", "llama3", "--rope-scaling-factor", "4"]
    out = run_pretrain(*flags, "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
                       "--load", str(m["ckpts"][layout]), "--finetune", nproc=tp * pp)
    got = losses(out)
    assert list(got) == [1], out[-3000:]
    rel = abs(got[1] - m["ref"]) / m["ref"]
    print(f"{name} {layout}: pretrain_gpt {got[1]:.7e} transformers {m['ref']:.7e} relative {rel:.2e}")
    assert rel <= REL, (got[1], m["ref"], rel)
