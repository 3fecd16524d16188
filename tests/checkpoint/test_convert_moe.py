"""Mixture-of-experts conversion: hf -> mg -> hf bit for bit (Qwen3-MoE, Qwen2-MoE, Mixtral) at EP2 and
TP2 x EP2 x PP2, in both Megatron expert layouts, from the hub's per-expert tensors and from transformers 5's
fused ones; mg -> mg EP2 -> EP1 -> EP2; a folder missing one expert tensor (or holding one too many) is
refused naming it; the families' expert keys honoured or refused by name.

The reference is transformers' own ``save_pretrained`` output (the hub's per-expert names).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mindspeed_llm.convert.convert import ConvertOptions, convert
from mindspeed_llm.convert.errors import CheckpointError
from mindspeed_llm.models.families import ModelConfig, UnsupportedModelError
from mindspeed_llm.runtime.checkpoint import layout
from tests.helpers.tiny_moe import make_moe_hf_model, tiny_moe_config

KINDS = ("qwen3_moe", "qwen2_moe", "mixtral")
# (TP, PP, EP, grouped experts)
LAYOUTS = {"ep2": (1, 1, 2, False), "tp2ep2pp2_grouped": (2, 2, 2, True)}


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _hf_to_mg(hf, mg, tp=1, pp=1, ep=1, grouped=False):
    return convert(ConvertOptions("hf", "mg", str(hf), str(mg), target_tp=tp, target_pp=pp, target_ep=ep,
                                  moe_grouped_gemm=grouped, progress=False,
                                  add_qkv_bias=(hf / "config.json").read_text().count("Qwen2Moe") > 0))


def _model_states(root) -> dict[str, dict]:
    """{rank folder: model state dict} of a converted checkpoint."""
    it = layout.iteration_dir(root, layout.read_tracker(root))
    return {p.name: layout.load_rank_file(str(p / layout.MODEL_FILENAME), mmap=False)["model"]
            for p in sorted(Path(it).iterdir())}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_convert")
    # 4 layers; Qwen3-MoE with a dense layer (mlp_only_layers) among its MoE layers.
    hf = {kind: make_moe_hf_model(root / kind, kind, num_layers=4,
                                  **({"mlp_only_layers": [1]} if kind == "qwen3_moe" else {}))
          for kind in KINDS}
    return root, hf


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_hf_to_mg_to_hf_is_bit_identical(models, tmp_path, kind, name):
    root, hf = models
    tp, pp, ep, grouped = LAYOUTS[name]
    mg = _hf_to_mg(hf[kind], tmp_path / "mg", tp, pp, ep, grouped)
    ranks = sorted(p.name for p in (tmp_path / "mg" / "iter_0000001").iterdir())
    want = [layout.rank_dir_name(t, p, pp, e, ep) for t in range(tp) for p in range(pp) for e in range(ep)]
    assert ranks == sorted(want)
    state = layout.load_rank_file(layout.checkpoint_file_for(mg, 1, 0, pp - 1, pp, 1, ep))["model"]
    last = "decoder.layers.0.mlp.experts"
    assert (f"{last}.weight1" in state) == grouped
    assert (f"{last}.local_experts.1.linear_fc1.weight" in state) != grouped
    back = convert(ConvertOptions("mg", "hf", mg, str(tmp_path / "hf"), progress=False))
    a, b = _tensors(hf[kind]), _tensors(tmp_path / "hf")
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == json.loads(
        (hf[kind] / "config.json").read_text())["architectures"]
    assert back


def test_fused_transformers5_experts_are_read_as_the_hubs(models, tmp_path):
    """A folder saved with transformers 5's fused experts (mlp.experts.gate_up_proj) converts to the same
    checkpoint as the hub's per-expert folder of the same model."""
    root, hf = models
    fused = make_moe_hf_model(tmp_path / "fused", "mixtral", num_layers=4, fused=True)
    names = set(_tensors(fused))
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and not any("block_sparse" in n for n in names)
    a = _model_states(_hf_to_mg(fused, tmp_path / "a", ep=2))
    b = _model_states(_hf_to_mg(hf["mixtral"], tmp_path / "b", ep=2))
    assert a.keys() == b.keys()
    for rank in a:
        assert a[rank].keys() == b[rank].keys()
        for key, value in a[rank].items():
            same = (value is None and b[rank][key] is None) or torch.equal(value, b[rank][key])
            assert same, (rank, key)


def test_mg_to_mg_ep2_to_ep1_and_back(models, tmp_path):
    """EP2 (grouped) -> EP1 (sequential) equals the direct EP1 conversion; back to EP2 grouped equals the
    first EP2 checkpoint, file for file."""
    root, hf = models
    ep2 = _hf_to_mg(hf["qwen2_moe"], tmp_path / "ep2", ep=2, grouped=True)
    ep1 = convert(ConvertOptions("mg", "mg", ep2, str(tmp_path / "ep1"), target_ep=1, progress=False))
    direct = _hf_to_mg(hf["qwen2_moe"], tmp_path / "direct", ep=1)
    back = convert(ConvertOptions("mg", "mg", ep1, str(tmp_path / "back"), target_ep=2,
                                  moe_grouped_gemm=True, progress=False))
    for got, want in ((ep1, direct), (back, ep2)):
        a, b = _model_states(got), _model_states(want)
        assert a.keys() == b.keys()
        for rank in a:
            assert a[rank].keys() == b[rank].keys(), rank
            for key, value in a[rank].items():
                same = (value is None and b[rank][key] is None) or torch.equal(value, b[rank][key])
                assert same, (rank, key)
    path = layout.checkpoint_file_for(back, 1, 0, 0, 1, 1, 2)
    record = layout.read_header(layout.load_rank_file(path), path)
    assert (record.layout.ep, record.layout.etp, record.model.settings["moe_grouped_gemm"]) == (2, 1, True)


def test_a_missing_expert_tensor_is_refused_naming_it(models, tmp_path):
    root, hf = models
    src = tmp_path / "src"
    shutil.copytree(hf["qwen3_moe"], src)
    tensors = _tensors(src)
    gone = "model.layers.2.mlp.experts.3.up_proj.weight"
    del tensors[gone]
    for f in src.glob("*.safetensors"):
        f.unlink()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=gone.replace(".", r"\.")):
        _hf_to_mg(src, tmp_path / "mg", ep=2)
    assert not (tmp_path / "mg").exists()
    # A tensor config.json has no place for (a fifth expert) is refused by name too, never dropped.
    tensors[gone] = tensors["model.layers.2.mlp.experts.2.up_proj.weight"].clone()
    extra = "model.layers.2.mlp.experts.4.up_proj.weight"
    tensors[extra] = tensors[gone].clone()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=extra.replace(".", r"\.")):
        _hf_to_mg(src, tmp_path / "mg")


def test_families_honour_the_expert_keys():
    qwen3 = ModelConfig.from_hf_config(tiny_moe_config("qwen3_moe", num_layers=6, decoder_sparse_step=2,
                                                       mlp_only_layers=[3], norm_topk_prob=True))
    assert qwen3.moe_layers() == (0, 1, 0, 0, 0, 1) and not qwen3.moe_router_pre_softmax
    assert (qwen3.num_experts, qwen3.moe_router_topk, qwen3.moe_ffn_hidden_size) == (4, 2, 16)
    qwen2 = ModelConfig.from_hf_config(tiny_moe_config("qwen2_moe"))
    assert qwen2.moe_router_pre_softmax and qwen2.moe_shared_expert_gate
    assert qwen2.moe_shared_expert_intermediate_size == 24 and qwen2.add_qkv_bias
    mixtral = ModelConfig.from_hf_config(tiny_moe_config("mixtral"))
    assert (mixtral.num_experts, mixtral.moe_ffn_hidden_size) == (4, 24)
    assert not mixtral.moe_router_pre_softmax
    # Written back: the same experts.
    for cfg in (qwen3, qwen2, mixtral):
        again = ModelConfig.from_hf_config(cfg.to_hf_config())
        assert again.moe_layers() == cfg.moe_layers() and again.moe_transformer_config_kwargs() == (
            cfg.moe_transformer_config_kwargs())


@pytest.mark.parametrize("kind, changes, words", [
    ("mixtral", {"router_jitter_noise": 0.01}, "router_jitter_noise=0.01"),
    ("qwen3_moe", {"num_local_experts": 8}, "num_experts=4 and num_local_experts=8"),
    ("qwen3_moe", {"mlp_only_layers": [7]}, "mlp_only_layers holds 7"),
    ("qwen2_moe", {"qkv_bias": False}, "qkv_bias=False"),
    ("qwen3_moe", {"num_experts_per_tok": 5}, "num_experts_per_tok=5"),
    ("mixtral", {"moe_intermediate_size": 16}, "moe_intermediate_size=16 is not known for Mixtral"),
])
def test_expert_keys_that_cannot_run_are_refused_by_name(kind, changes, words):
    with pytest.raises((UnsupportedModelError, ValueError), match=words.replace("[", r"\[")):
        ModelConfig.from_hf_config(tiny_moe_config(kind, **changes))


@pytest.mark.parametrize("changes, words", [
    ({"target_ep": 3}, "--target-expert-parallel-size 3 does not divide"),
    ({"target_tp": 2, "target_etp": 1}, "--expert-tensor-parallel-size 1 with --target-tensor-parallel"),
])
def test_expert_layouts_that_do_not_fit_are_refused(models, tmp_path, changes, words):
    root, hf = models
    with pytest.raises(CheckpointError, match=words):
        convert(ConvertOptions("hf", "mg", str(hf["mixtral"]), str(tmp_path / "mg"), progress=False,
                               **changes))
