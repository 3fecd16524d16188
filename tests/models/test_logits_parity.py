"""Our megatron-core model, filled by the converter, gives transformers' logits (fp32) at TP1/TP2/PP2/TP2xPP2.

One torchrun launch (4 processes on gloo) runs every case; each rank also loads its own converted file with
``strict=True`` into the GPTModel of its rank.
"""

import json
import os

import pytest
import torch

from mindspeed_llm.convert import ConvertOptions, convert
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.conftest import torchrun

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_worker.py")
IDS = [[1, 5, 9, 23, 42, 77, 3, 99, 64, 12, 7, 88, 31, 2, 50, 17]]
MODELS = {
    "qwen_untied": ("qwen2", 128, True),  # GQA (4 heads, 2 groups), qkv bias
    "qwen_tied": ("qwen2_tied", 127, True),  # tied embeddings, odd vocabulary padded at TP2
    "llama": ("llama", 128, False),
    "qwen3_untied": ("qwen3", 128, False),  # q/k norms, head_dim 32 != hidden / heads
    "qwen3_tied": ("qwen3_tied", 127, False),
}
LAYOUTS = [(1, 1, None), (2, 1, None), (1, 2, None), (2, 2, None)]
TOLERANCE = 1e-4


@pytest.mark.slow
def test_megatron_logits_match_transformers(tmp_path):
    cases = []
    for name, (kind, vocab, bias) in MODELS.items():
        folder = str(tmp_path / name)
        model = make_tiny_hf_model(folder, kind, vocab_size=vocab)
        with torch.no_grad():
            ref = model(torch.tensor(IDS)).logits.float()
        ref_path = str(tmp_path / f"{name}_logits.pt")
        torch.save(ref, ref_path)
        layouts = LAYOUTS + ([(2, 2, [1, 3])] if name == "qwen_untied" else [])
        for tp, pp, layer_list in layouts:
            case = f"{name}_tp{tp}_pp{pp}" + ("_" + "-".join(map(str, layer_list)) if layer_list else "")
            root = convert(
                ConvertOptions(
                    "hf",
                    "mg",
                    folder,
                    str(tmp_path / case),
                    target_tp=tp,
                    target_pp=pp,
                    num_layer_list=layer_list,
                    add_qkv_bias=bias,
                    progress=False,
                )
            )
            cases.append({"name": case, "mg_root": root, "ref": ref_path, "tp": tp, "pp": pp})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"ids": IDS, "cases": cases}))
    out = tmp_path / "out"
    out.mkdir()
    torchrun(WORKER, str(spec), str(out), nproc=4, timeout=400)
    diffs = {c["name"]: json.loads((out / f"{c['name']}.json").read_text())["max_abs_diff"] for c in cases}
    print(diffs)
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
