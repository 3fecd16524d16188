"""LoRA equals peft: the same adapter (made by peft, imported by convert_ckpt.py) gives peft's loss and A/B
gradients at TP1, TP2 and PP2; a few trained steps later the exported peft adapter gives our logits, the
merged export is peft's merge_and_unload() tensor for tensor (fp32 and bf16 bases); --lora-ckpt-filter saves
only the adapter and --lora-load resumes exactly.

Shared launches: two posttrain_gpt.py --stage sft runs (TP2 + sequence parallel, recompute, distributed
optimizer) and one worker launch for every layout.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mindspeed_llm.convert.convert import ConvertOptions, convert
from mindspeed_llm.convert.errors import CheckpointError
from mindspeed_llm.convert.mapping import qkv_interleave
from mindspeed_llm.lora.config import LoraError
from mindspeed_llm.models.families import ModelConfig
from mindspeed_llm.runtime.checkpoint import layout
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.conftest import REPO_ROOT, torchrun
from tests.e2e.pretrain_helpers import loss_strings, model_flags, train_flags, write_instruction_data
from tests.models.lora_helpers import load_peft_model, make_peft_adapter, peft_loss_and_grads

WORKER = Path(__file__).with_name("lora_worker.py")
POSTTRAIN = REPO_ROOT / "posttrain_gpt.py"
IDS = [[1, 5, 9, 23, 42, 77, 3, 99, 64, 12, 7, 88, 31, 2, 50, 17]]
REL = 1e-5
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "--lora-r", "4",
        "--lora-alpha", "8"]


def _convert(src: Path, dst: Path, **kw) -> str:
    return convert(ConvertOptions(progress=False, load_dir=str(src), save_dir=str(dst), **kw))


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """peft adapter -> Megatron at TP1/TP2/PP2, a 4-step LoRA SFT run (posttrain_gpt.py --stage sft on
    instruction data; TP2 with sequence parallelism, full recompute, the distributed optimizer; adapter-only
    saves at 2 and 4), its resume from 2 through --lora-load, and one worker launch (first-step gradients per
    layout; trained logits)."""
    tmp = tmp_path_factory.mktemp("lora")
    hf, adapter = tmp / "hf", tmp / "peft"
    make_tiny_hf_model(str(hf), "qwen2", num_layers=2)
    make_peft_adapter(str(hf), str(adapter))
    mg = {}
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        mg[tp, pp] = _convert(
            hf,
            tmp / f"mg_tp{tp}_pp{pp}",
            load_model_type="hf",
            save_model_type="mg",
            target_tp=tp,
            target_pp=pp,
            add_qkv_bias=True,
            lora_load=str(adapter),
        )
    data = _instruction_data(tmp / "data" / "sft")
    flags = [
        *model_flags(hf),
        *train_flags(data, iters=4, seq=16),
        "--stage",
        "sft",
        "--prompt-type",
        "qwen",
        *LORA,
        "--tensor-model-parallel-size",
        "2",
        "--sequence-parallel",
        "--recompute-granularity",
        "full",
        "--recompute-method",
        "uniform",
        "--recompute-num-layers",
        "1",
        "--use-distributed-optimizer",
        "--lora-ckpt-filter",
    ]
    save_a, save_b = tmp / "run_a", tmp / "run_b"
    # --lora-load == --save with nothing there yet: a new run at iteration 0 (the adapter --load holds:
    # peft's).
    out_a = torchrun(POSTTRAIN, *flags, "--load", mg[2, 1], "--lora-load", str(save_a), "--save", str(save_a),
                     "--save-interval", "2", nproc=2, timeout=300).stdout
    at_2 = tmp / "adapter_at_2"
    shutil.copytree(save_a / "iter_0000002", at_2 / "iter_0000002")
    layout.write_tracker(at_2, 2)
    out_b = torchrun(
        POSTTRAIN,
        *flags,
        "--load",
        mg[2, 1],
        "--lora-load",
        str(at_2),
        "--save",
        str(save_b),
        nproc=2,
        timeout=300,
    ).stdout

    cases = [{"name": f"grads_tp{tp}_pp{pp}", "kind": "grads", "mg_root": mg[tp, pp], "tp": tp, "pp": pp}
             for tp, pp in mg]
    cases.append(
        {
            "name": "trained_logits",
            "kind": "logits",
            "mg_root": mg[2, 1],
            "adapter_root": str(save_a),
            "tp": 2,
            "pp": 1,
        }
    )
    spec, out = tmp / "spec.json", tmp / "out"
    out.mkdir()
    spec.write_text(json.dumps({"ids": IDS, "cases": cases}))
    torchrun(WORKER, str(spec), str(out), nproc=2, timeout=400)
    reference = peft_loss_and_grads(str(hf), str(adapter), IDS)
    return {
        "reference": reference,
        "tmp": tmp,
        "hf": hf,
        "adapter": adapter,
        "mg": mg,
        "save_a": save_a,
        "save_b": save_b,
        "out_a": out_a,
        "out_b": out_b,
        "out": out,
    }


def _instruction_data(prefix: Path) -> str:
    """SFT samples as preprocess_data.py writes them: ids, attention mask, labels -100 on the prompt."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(48):
        prompt, answer = int(rng.integers(3, 9)), int(rng.integers(4, 12))
        ids = rng.integers(3, 128, prompt + answer)
        rows.append((ids, np.ones_like(ids), np.concatenate([np.full(prompt, -100), ids[prompt:]])))
    return write_instruction_data(prefix, rows)


def _fused_reference(grads: dict, cfg: ModelConfig, layer: int) -> dict[str, torch.Tensor]:
    """peft's per-module gradients in megatron's fused form: a shared A's gradient is the sum of its
    users'."""
    g = {k[1:]: v for k, v in grads.items() if k[0] == layer}
    return {
        "self_attention.linear_qkv.lora_A": g["q_proj", "A"] + g["k_proj", "A"] + g["v_proj", "A"],
        "self_attention.linear_qkv.lora_B": qkv_interleave(
            g["q_proj", "B"], g["k_proj", "B"], g["v_proj", "B"], cfg
        ),
        "self_attention.linear_proj.lora_A": g["o_proj", "A"],
        "self_attention.linear_proj.lora_B": g["o_proj", "B"],
        "mlp.linear_fc1.lora_A": g["gate_proj", "A"] + g["up_proj", "A"],
        "mlp.linear_fc1.lora_B": torch.cat([g["gate_proj", "B"], g["up_proj", "B"]]),
        "mlp.linear_fc2.lora_A": g["down_proj", "A"],
        "mlp.linear_fc2.lora_B": g["down_proj", "B"],
    }


def _merged_over_tp(out: Path, name: str, tp: int, pp: int) -> dict[str, torch.Tensor]:
    """Every rank's LoRA gradients merged into whole tensors by the TP rule (A/B split or whole)."""
    from mindspeed_llm.lora.keys import LORA_MODULES
    from mindspeed_llm.lora.tp import unshard_adapter

    by_module = {m.mcore: m.name for m in LORA_MODULES.values()}
    merged: dict[str, torch.Tensor] = {}
    for p in range(pp):
        ranks = [torch.load(out / f"{name}_tp{t}_pp{p}.pt", weights_only=True)["grads"] for t in range(tp)]
        for key in ranks[0]:
            if ".lora_B." in key:
                continue
            prefix = key.split(".lora_A.")[0]
            layer_module = prefix.split(".", 3)[3]
            pairs = [(r[key], r[prefix + ".lora_B.weight"]) for r in ranks]
            a, b = unshard_adapter(by_module[layer_module], pairs)
            merged[prefix + ".lora_A"], merged[prefix + ".lora_B"] = a, b
    return merged


def _assert_rel(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = REL) -> None:
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err <= rel, f"{what}: relative difference {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)])
def test_first_step_loss_and_gradients_equal_peft(lora_runs, tp, pp):
    loss_ref, grads_ref = lora_runs["reference"]
    out, name = lora_runs["out"], f"grads_tp{tp}_pp{pp}"
    last = torch.load(out / f"{name}_tp0_pp{pp - 1}.pt", weights_only=True)
    assert abs(last["loss"] - loss_ref) <= REL * abs(loss_ref), (last["loss"], loss_ref)
    cfg = ModelConfig.from_hf_config(str(lora_runs["hf"] / "config.json"))
    merged = _merged_over_tp(out, name, tp, pp)
    assert len(merged) == 2 * 4 * cfg.num_layers
    for layer in range(cfg.num_layers):
        for key, want in _fused_reference(grads_ref, cfg, layer).items():
            _assert_rel(merged[f"decoder.layers.{layer}.{key}"], want, f"{name} layer {layer} {key}")


@pytest.mark.slow
def test_frozen_base_has_no_gradient_buffer_or_optimizer_state(lora_runs):
    for path in sorted(lora_runs["out"].glob("grads_*.pt")):
        r = torch.load(path, weights_only=True)
        assert r["frozen_with_grad"] == [], path.name
        assert r["buffer_numel"] == r["lora_numel"] == r["optimizer_numel"], (
            path.name,
            r["buffer_numel"],
            r["lora_numel"],
            r["optimizer_numel"],
        )


@pytest.mark.slow
def test_filtered_checkpoint_holds_only_adapter_and_resume_is_exact(lora_runs):
    save_a, save_b = lora_runs["save_a"], lora_runs["save_b"]
    for t in range(2):
        state = layout.load_rank_state(save_a, 4, t, 0, 1, mmap=False)
        assert state["model"] and all(".lora_A." in k or ".lora_B." in k for k in state["model"]), list(
            state["model"]
        )
        assert {"optimizer", "opt_param_scheduler", "rng_state", "iteration", "args"} <= set(state)
        assert (save_a / "iter_0000004" / f"mp_rank_0{t}" / "distrib_optim.pt").is_file()
        resumed = layout.load_rank_state(save_b, 4, t, 0, 1, mmap=False)
        assert resumed["model"].keys() == state["model"].keys()
        for k, v in state["model"].items():
            assert torch.equal(resumed["model"][k], v), k
    unbroken, resumed = loss_strings(lora_runs["out_a"]), loss_strings(lora_runs["out_b"])
    assert sorted(resumed) == [3, 4]
    assert {i: unbroken[i] for i in (3, 4)} == resumed
    assert "trainable LoRA parameters" in lora_runs["out_a"]


@pytest.mark.slow
def test_exported_peft_adapter_gives_our_logits_and_merged_export_equals_peft_merge(lora_runs):
    tmp = lora_runs["tmp"]
    ours = torch.load(lora_runs["out"] / "trained_logits.pt", weights_only=True)
    exported = _convert(
        Path(lora_runs["mg"][2, 1]),
        tmp / "peft_export",
        load_model_type="mg",
        save_model_type="hf",
        lora_load=str(lora_runs["save_a"]),
        save_lora_to_hf=True,
        hf_dir=str(lora_runs["hf"]),
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(exported))
    peft_model = load_peft_model(str(lora_runs["hf"]), exported).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(IDS)).logits.float()
    _assert_rel(ours, theirs, "trained logits vs exported adapter in peft")
    assert not torch.equal(ours, load_peft_model(str(lora_runs["hf"]), str(lora_runs["adapter"]))(
        input_ids=torch.tensor(IDS)).logits.float()), "training changed nothing"
    merged = _convert(Path(lora_runs["mg"][2, 1]), tmp / "merged", load_model_type="mg", save_model_type="hf",
                      lora_load=str(lora_runs["save_a"]), hf_dir=str(lora_runs["hf"]))
    _assert_merged_equal(merged, peft_model.merge_and_unload())
    with pytest.raises(CheckpointError, match="holds only LoRA adapter tensors.*--lora-load"):
        _convert(lora_runs["save_a"], tmp / "x", load_model_type="mg", save_model_type="hf")
    with pytest.raises(LoraError, match="--lora-r 8 contradicts the adapter"):
        _convert(Path(lora_runs["mg"][2, 1]), tmp / "y", load_model_type="mg", save_model_type="hf",
                 lora_load=str(lora_runs["save_a"]), lora_expected={"r": 8})


def _assert_merged_equal(folder: str, reference) -> None:
    """Tensor for tensor, bitwise, in the reference's dtype."""
    from safetensors.torch import load_file

    got = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            got.update(load_file(os.path.join(folder, name)))
    want = reference.state_dict()
    if "lm_head.weight" not in got:
        want.pop("lm_head.weight", None)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype, (k, got[k].dtype, v.dtype)
        assert torch.equal(got[k], v), k


def test_merged_export_of_a_bf16_base_equals_peft_merge(tmp_path):
    hf, adapter = tmp_path / "hf", tmp_path / "peft"
    make_tiny_hf_model(str(hf), "llama", num_layers=2, dtype=torch.bfloat16)
    make_peft_adapter(str(hf), str(adapter))
    mg = _convert(
        hf, tmp_path / "mg", load_model_type="hf", save_model_type="mg", target_tp=2, lora_load=str(adapter)
    )
    merged = _convert(
        Path(mg), tmp_path / "merged", load_model_type="mg", save_model_type="hf", hf_dir=str(hf)
    )
    reference = load_peft_model(str(hf), str(adapter), dtype=torch.bfloat16).merge_and_unload()
    _assert_merged_equal(merged, reference)
    with open(os.path.join(merged, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"


def test_import_refuses_separate_a_matrices_and_partial_targets(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, adapter = tmp_path / "hf", tmp_path / "peft"
    make_tiny_hf_model(str(hf), "llama", num_layers=2)
    make_peft_adapter(str(hf), str(adapter))
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"
    weights[key] = weights[key] + 1.0
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(LoraError, match=r"layer 1 q_proj/k_proj/v_proj have different lora_A.*merge_and"):
        _convert(hf, tmp_path / "mg", load_model_type="hf", save_model_type="mg", lora_load=str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "o_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoraError, match="adapts q_proj but not all of q_proj, k_proj, v_proj"):
        _convert(hf, tmp_path / "mg2", load_model_type="hf", save_model_type="mg", lora_load=str(adapter))
    assert not (tmp_path / "mg").exists() and not (tmp_path / "mg2").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        ("--lora-load /x", ["--lora-load", "without --lora-target-modules"]),
        ("--lora-ckpt-filter", ["--lora-ckpt-filter", "without --lora-target-modules"]),
        ("--lora-target-modules linear_qkv --lora-r 0", ["--lora-r must be positive"]),
        ("--lora-target-modules linear_qkv --lora-dropout 1.0", ["--lora-dropout"]),
        ("--lora-target-modules linear_qkv --ckpt-format torch_dist", ["--ckpt-format torch"]),
        (
            "--lora-target-modules linear_qkv --lora-load /nonexistent/adapter --load /b",
            ["--lora-load", "not a folder"],
        ),
        ("--lora-target-modules linear_qkv --lora-load /a", ["--lora-load /a needs --load"]),
    ],
)
def test_lora_flags_refused_with_a_line(extra, words):
    from mindspeed_llm.config.flags import ArgumentError, parse_args
    from mindspeed_llm.config.validate import validate_args

    base = (
        "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr 1e-3 "
        "--swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path "
        "d_text_document"
    )
    with pytest.raises(ArgumentError) as exc:
        validate_args(parse_args(f"{base} {extra}".split()), 1)
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert "\n" not in str(exc.value)


def test_training_load_refuses_an_adapter_only_base_and_another_alpha():
    import argparse

    from mindspeed_llm.lora.checkpoint import weights_with_adapter
    from mindspeed_llm.lora.config import LoraConfig

    adapter_only = {"decoder.layers.0.mlp.linear_fc1.lora_A.weight": torch.zeros(2, 4),
                    "decoder.layers.0.mlp.linear_fc1.lora_B.weight": torch.zeros(4, 2)}
    state = {"args": argparse.Namespace(lora_alpha=16.0), "model": adapter_only}
    with pytest.raises(
        CheckpointError, match="holds only LoRA adapter tensors.*as --load and this folder as --lora-load"
    ):
        weights_with_adapter(
            LoraConfig(alpha=16.0), None, adapter_only, ("/ckpt/f.pt", state), None, "model", 1
        )
    full = {"decoder.layers.0.mlp.linear_fc1.weight": torch.zeros(4, 4), **adapter_only}
    state = {"args": argparse.Namespace(lora_alpha=16.0), "model": full}
    with pytest.raises(
        CheckpointError,
        match="trained with --lora-alpha 16, this launch has --lora-alpha 8: pass --lora-alpha 16",
    ):
        weights_with_adapter(LoraConfig(alpha=8.0), None, full, ("/ckpt/f.pt", state), None, "model", 1)
    assert (
        weights_with_adapter(LoraConfig(alpha=16.0), None, full, ("/ckpt/f.pt", state), None, "model", 1)
        is full
    )
    # inference.py (or training) without --lora-* flags on an adapter-only --load: pointed to --lora-load
    with pytest.raises(CheckpointError, match=r"/ckpt/f.pt holds only LoRA adapter tensors.*as --load, this "
                       r"folder as --lora-load and the adapter's --lora-r/--lora-alpha/"):
        weights_with_adapter(None, None, adapter_only, ("/ckpt/f.pt", state), None, "model", 1)


def test_inference_model_carries_the_adapter_the_lora_flags_name():
    from mindspeed_llm.config.namespace import build_namespace
    from mindspeed_llm.inference.cli import model_provider
    from tests.config.launch import plan_for, validated
    from tests.ops.megatron_env import single_process_model_parallel

    config, plan = plan_for(
        validated(
            "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr "
            "1e-3 --swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path "
            "d_text_document --lora-target-modules linear_qkv linear_fc2 --lora-r 4"
        ),
        vocab_rows=100,
    )
    with single_process_model_parallel():
        model = model_provider(build_namespace(config, plan), config, plan, True, True)
    keys = [k for k in model.state_dict() if ".lora_" in k]
    assert len(keys) == 2 * 2 * 2 and all("linear_qkv" in k or "linear_fc2" in k for k in keys)
