"""hf->mg->hf, mg->mg and dtype/vocabulary/tied rules on tiny random transformers models (one process)."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mindspeed_llm.convert import ConvertOptions, convert
from mindspeed_llm.runtime.checkpoint import load_rank_state, read_tracker
from mindspeed_llm.runtime.checkpoint.layout import parallel_sizes
from tests.checkpoint.record_edits import edit_recorded_model
from tests.checkpoint.tiny_models import load_hf_model, make_tiny_hf_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = torch.tensor([[1, 5, 9, 23, 42, 77, 3, 99, 64, 12, 7, 88]])

MODELS = {
    # name: (kind, vocab rows, tokenizer tokens, extra)
    "qwen_untied": ("qwen2", 128, 100, {}),  # more embedding rows than tokenizer tokens
    "qwen_tied": ("qwen2_tied", 127, 100, {"max_shard_size": "40KB"}),  # odd rows: TP2 pads; sharded input
    "llama": ("llama", 128, 128, {}),
    "qwen3_untied": ("qwen3", 128, 128, {}),  # q/k norms, head_dim 32 != hidden / heads 16
    "qwen3_tied": ("qwen3_tied", 127, 100, {}),
    "mistral": ("mistral", 128, 128, {}),
}
LAYOUTS = [(1, 1, None), (2, 1, None), (1, 2, None), (2, 2, None), (1, 2, [1, 3])]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, (kind, vocab, tokens, extra) in MODELS.items():
        folder = str(root / name)
        model = make_tiny_hf_model(folder, kind, vocab_size=vocab, tokenizer_tokens=tokens, **extra)
        with torch.no_grad():
            out[name] = (folder, model(IDS).logits)
    return out


def _hf_tensors(folder):
    tensors = {}
    for f in glob.glob(os.path.join(folder, "*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def _opts(load_type, save_type, load_dir, save_dir, **kw):
    return ConvertOptions(load_type, save_type, load_dir, save_dir, progress=False, **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("tp,pp,layer_list", LAYOUTS)
def test_hf_mg_hf_round_trip(hf_models, tmp_path, name, tp, pp, layer_list):
    folder, ref_logits = hf_models[name]
    bias = name.startswith("qwen_")
    mg = convert(_opts("hf", "mg", folder, str(tmp_path / "mg"), target_tp=tp, target_pp=pp,
                       num_layer_list=layer_list, add_qkv_bias=bias))
    assert read_tracker(mg) == 1 and parallel_sizes(mg, 1) == (tp, pp)
    args = load_rank_state(mg, None, 0, 0, pp)["args"]
    rows = MODELS[name][1]
    assert args.padded_vocab_size == (rows + tp - 1) // tp * tp and args.hf_vocab_size == rows
    assert args.hf_dir == os.path.abspath(folder)
    back = convert(_opts("mg", "hf", mg, str(tmp_path / "hf")))
    a, b = _hf_tensors(folder), _hf_tensors(back)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    for tok in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        assert os.path.isfile(os.path.join(back, tok))
    with torch.no_grad():
        logits = load_hf_model(back)(IDS).logits
    assert torch.equal(logits, ref_logits)


def _rank_shapes(cfg_rows, tp, h=64, ffn=96, heads=4, groups=2, d=16, bias=True):
    qkv = (heads + 2 * groups) * d // tp
    shapes = {
        "self_attention.linear_qkv.weight": (qkv, h),
        "self_attention.linear_proj.weight": (h, heads * d // tp),
        "mlp.linear_fc1.weight": (2 * ffn // tp, h),
        "mlp.linear_fc2.weight": (h, ffn // tp),
        "input_layernorm.weight": (h,),
        "pre_mlp_layernorm.weight": (h,),
    }
    if bias:
        shapes["self_attention.linear_qkv.bias"] = (qkv,)
    return shapes


def test_rank_files_hold_megatron_keys_and_shapes(hf_models, tmp_path):
    """Names restart at decoder.layers.0 per stage; tied PP>1 last stage holds output_layer.weight."""
    folder, _ = hf_models["qwen_tied"]
    mg = convert(_opts("hf", "mg", folder, str(tmp_path / "mg"), target_tp=2, target_pp=2, add_qkv_bias=True))
    per_layer = _rank_shapes(127, 2)
    emb = None
    for pp in range(2):
        for tp in range(2):
            sd = load_rank_state(mg, 1, tp, pp, 2)["model"]
            layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("decoder.layers.")})
            assert layers == [0, 1]
            for i in layers:
                for suffix, shape in per_layer.items():
                    assert tuple(sd[f"decoder.layers.{i}.{suffix}"].shape) == shape
                assert sd[f"decoder.layers.{i}.self_attention.linear_qkv._extra_state"] is None
            if pp == 0:
                assert sd["embedding.word_embeddings.weight"].shape == (64, 64)
                assert "output_layer.weight" not in sd
                if tp == 1:
                    emb = sd["embedding.word_embeddings.weight"]
                    assert torch.equal(emb[-1], emb[-2])  # row 127 repeats row 126
            else:
                assert "embedding.word_embeddings.weight" not in sd
                assert sd["output_layer.weight"].shape == (64, 64) and "output_layer._extra_state" in sd
                if tp == 1:
                    assert torch.equal(sd["output_layer.weight"], emb)
    one = convert(_opts("hf", "mg", folder, str(tmp_path / "mg1"), add_qkv_bias=True))
    sd = load_rank_state(one, 1, 0, 0, 1)["model"]
    assert "output_layer.weight" not in sd and "output_layer._extra_state" in sd  # tied, one stage


@pytest.mark.parametrize("name", ["qwen_untied", "qwen3_tied"])
def test_mg_to_mg_equals_direct_conversion(hf_models, tmp_path, name):
    folder, _ = hf_models[name]
    bias = name.startswith("qwen_")
    tp2 = convert(_opts("hf", "mg", folder, str(tmp_path / "tp2"), target_tp=2, add_qkv_bias=bias))
    resharded = convert(_opts("mg", "mg", tp2, str(tmp_path / "pp2"), target_pp=2))
    direct = convert(_opts("hf", "mg", folder, str(tmp_path / "direct"), target_pp=2, add_qkv_bias=bias))
    for pp in range(2):
        a = load_rank_state(resharded, 1, 0, pp, 2)
        b = load_rank_state(direct, 1, 0, pp, 2)
        assert a["model"].keys() == b["model"].keys()
        for key, value in a["model"].items():
            assert (value is None and b["model"][key] is None) or torch.equal(value, b["model"][key]), key
        for field in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "padded_vocab_size",
                      "num_layers", "num_query_groups", "add_qkv_bias", "qk_layernorm", "kv_channels",
                      "untie_embeddings_and_output_weights"):
            assert getattr(a["args"], field) == getattr(b["args"], field), field


def test_dtype_is_kept_by_default_and_converted_on_request(tmp_path):
    folder = str(tmp_path / "hf_bf16")
    make_tiny_hf_model(folder, "llama", dtype=torch.bfloat16)
    kept = convert(_opts("hf", "mg", folder, str(tmp_path / "kept")))
    state = load_rank_state(kept, 1, 0, 0, 1)
    assert state["model"]["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    assert state["args"].params_dtype == torch.bfloat16 and state["args"].bf16
    fp32 = convert(_opts("hf", "mg", folder, str(tmp_path / "fp32"), params_dtype=torch.float32))
    assert (
        load_rank_state(fp32, 1, 0, 0, 1)["model"]["decoder.layers.0.mlp.linear_fc1.weight"].dtype
        == torch.float32
    )
    back = convert(_opts("mg", "hf", fp32, str(tmp_path / "back"), params_dtype=torch.bfloat16))
    a, b = _hf_tensors(folder), _hf_tensors(back)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bf16 -> fp32 -> bf16 is exact
    with open(os.path.join(back, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"


def test_vocab_padding_flags(hf_models, tmp_path):
    folder, _ = hf_models["qwen_tied"]
    mg = convert(_opts("hf", "mg", folder, str(tmp_path / "a"), target_tp=2, add_qkv_bias=True,
                       make_vocab_size_divisible_by=8))
    assert load_rank_state(mg, 1, 0, 0, 1)["args"].padded_vocab_size == 128
    mg = convert(_opts("hf", "mg", folder, str(tmp_path / "b"), add_qkv_bias=True, padded_vocab_size=136))
    state = load_rank_state(mg, 1, 0, 0, 1)
    emb = state["model"]["embedding.word_embeddings.weight"]
    assert state["args"].padded_vocab_size == 136 and emb.shape[0] == 136
    assert all(torch.equal(emb[i], emb[126]) for i in range(127, 136))


def test_mindspeed_form_writes_mg2hf_subfolder(hf_models, tmp_path):
    import shutil

    folder, _ = hf_models["llama"]
    hf_copy = str(tmp_path / "orig")
    shutil.copytree(folder, hf_copy)
    mg = convert(_opts("hf", "mg", hf_copy, str(tmp_path / "mg")))
    written = convert(_opts("mg", "hf", mg, hf_copy))
    assert written == os.path.join(hf_copy, "mg2hf")
    assert os.path.isfile(os.path.join(written, "model.safetensors"))


def test_seed_command_works_as_written(hf_models, tmp_path):
    """The seed's exact command line (paths relative to the working folder)."""
    import shutil

    folder, _ = hf_models["qwen_untied"]
    os.makedirs(tmp_path / "model_from_hf")
    shutil.copytree(folder, tmp_path / "model_from_hf" / "qwen2.5-7b-hf")
    cmd = [sys.executable, os.path.join(REPO, "convert_ckpt.py"),
           "--use-mcore-models", "--model-type", "GPT", "--load-model-type", "hf", "--save-model-type", "mg",
           "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "4", "--add-qkv-bias",
           "--load-dir", "./model_from_hf/qwen2.5-7b-hf/", "--save-dir", "./model_weights/qwen2.5_mcore/",
           "--tokenizer-model", "./model_from_hf/qwen2.5-7b-hf/tokenizer.json", "--model-type-hf", "llama2",
           "--params-dtype", "bf16"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "model_weights" / "qwen2.5_mcore"
    assert read_tracker(root) == 1 and parallel_sizes(root, 1) == (1, 4)
    state = load_rank_state(root, 1, 0, 3, 4)
    assert state["model"]["output_layer.weight"].dtype == torch.bfloat16
    assert state["args"].tokenizer_model.endswith("tokenizer.json")
    assert not [p for p in os.listdir(root.parent) if ".tmp-" in p]


def test_mg_to_hf_reads_a_training_style_checkpoint(hf_models, tmp_path):
    """Any iteration, optimizer/RNG state present (ignored), no hf_dir recorded: --hf-dir supplies the
    config."""
    import numpy as np

    from mindspeed_llm.runtime.checkpoint import save_rank_state, write_tracker

    folder, ref_logits = hf_models["llama"]
    mg = convert(_opts("hf", "mg", folder, str(tmp_path / "mg"), target_tp=2))
    trained = str(tmp_path / "trained")
    for tp in range(2):
        state = load_rank_state(mg, 1, tp, 0, 1, mmap=False)
        edit_recorded_model(state, hf_dir=None, hf_config=None)
        state.update(iteration=20, optimizer={"state": {0: {"exp_avg": torch.zeros(3)}}},
                     opt_param_scheduler={"num_steps": 20},
                     rng_state=[{"random_rng_state": ("x",), "np_rng_state": np.random.get_state(),
                                 "torch_rng_state": torch.get_rng_state()}])
        save_rank_state(trained, 20, tp, 0, 1, state)
    write_tracker(trained, 20)
    back = convert(_opts("mg", "hf", trained, str(tmp_path / "hf"), hf_dir=folder))
    a, b = _hf_tensors(folder), _hf_tensors(back)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mg_to_hf_reads_a_virtual_pipeline_checkpoint(hf_models, tmp_path):
    """PP2 x VPP2 rank files (model0, model1), as training writes them, convert back bit-identically."""
    from mindspeed_llm.runtime.checkpoint import save_rank_state, write_tracker

    folder, _ = hf_models["qwen_tied"]
    pp4 = convert(
        _opts("hf", "mg", folder, str(tmp_path / "pp4"), target_tp=2, target_pp=4, add_qkv_bias=True)
    )
    vpp = str(tmp_path / "vpp")
    for tp in range(2):
        for p in range(2):  # virtual stage s = chunk * PP + p
            chunks = [load_rank_state(pp4, 1, tp, chunk * 2 + p, 4, mmap=False) for chunk in range(2)]
            args = chunks[0]["args"]
            args.pipeline_model_parallel_size, args.virtual_pipeline_model_parallel_size = 2, 2
            state = {"args": args, "checkpoint_version": 3.0, "iteration": 5,
                     "model0": chunks[0]["model"], "model1": chunks[1]["model"]}
            save_rank_state(vpp, 5, tp, p, 2, state)
    write_tracker(vpp, 5)
    back = convert(_opts("mg", "hf", vpp, str(tmp_path / "hf")))
    a, b = _hf_tensors(folder), _hf_tensors(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
