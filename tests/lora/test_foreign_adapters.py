"""LoRA adapters from elsewhere, validated against their base before anything is written: one line naming
the adapter file, the tensor, its shape and the base's; r and alpha positive and finite.

Real adapters: peft's own (``get_peft_model`` + ``save_pretrained``) on transformers' tiny models, one of
another width; Megatron adapter checkpoints written by convert_ckpt.py's hf->mg import of those.
"""

from __future__ import annotations

import json
import math

import pytest

from mindspeed_llm.convert.cli import main
from tests.helpers.tiny import make_tiny_hf_model
from tests.models.lora_helpers import make_peft_adapter
from tests.tool_process import leftovers, tree_digest

HF2MG = ["--load-model-type", "hf", "--save-model-type", "mg"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The base (llama, hidden 64, 2 layers) and a model of another width (hidden 48), each with a peft
    adapter and a Megatron checkpoint holding base + adapter (hf->mg --lora-load)."""
    root = tmp_path_factory.mktemp("foreign_lora")
    out = {}
    for name, changes in (("base", {}), ("wide", {"hidden_size": 48, "intermediate_size": 80})):
        hf, peft = root / f"{name}_hf", root / f"{name}_peft"
        make_tiny_hf_model(str(hf), "llama", num_layers=2, **changes)
        make_peft_adapter(str(hf), str(peft))
        mg = root / f"{name}_mg"
        assert main([*HF2MG, "--load-dir", str(hf), "--save-dir", str(mg), "--lora-load", str(peft),
                     "--no-progress"]) == 0
        plain = root / f"{name}_plain"
        assert main([*HF2MG, "--load-dir", str(hf), "--save-dir", str(plain), "--no-progress"]) == 0
        out[name] = {"hf": hf, "peft": peft, "mg": mg, "plain": plain}
    return out


def _refused(capsys, argv, inputs, save):
    """Exit 2, exactly one error line and no traceback; the inputs unchanged, nothing written."""
    before = {str(p): tree_digest(p) for p in inputs}
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert not save.exists() and leftovers(save.parent) == []
    assert {str(p): tree_digest(p) for p in inputs} == before
    return lines[0]


def test_a_peft_adapter_of_another_width_is_refused_on_import(models, tmp_path, capsys):
    base, wide = models["base"], models["wide"]
    save = tmp_path / "mg"
    line = _refused(capsys, [*HF2MG, "--load-dir", str(base["hf"]), "--save-dir", str(save), "--lora-load",
                             str(wide["peft"])],
                    [base["hf"], wide["peft"]], save)
    # peft's q_proj lora_A of the 48-wide model is [4, 48]; the base's q_proj takes 64 inputs.
    assert line == (f"error: {wide['peft'] / 'adapter_model.safetensors'}: "
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 48], the "
                    "base model's self_attn.q_proj needs [4, 64] (r=4): the adapter belongs to another model")


@pytest.mark.parametrize("change, words", [
    ({"r": 0}, "r is 0, not a positive rank"),
    ({"r": None}, "r is None, not a positive rank"),
    ({"lora_alpha": math.nan}, "lora_alpha is nan, not a positive finite number"),
    ({"lora_alpha": 0}, "lora_alpha is 0.0, not a positive finite number"),
    ({"lora_alpha": "eight"}, "lora_alpha is 'eight', not a number"),
])
def test_adapter_config_settings_are_checked(models, tmp_path, capsys, change, words):
    import shutil

    peft = shutil.copytree(models["base"]["peft"], tmp_path / "peft")
    config = json.loads((peft / "adapter_config.json").read_text())
    config.update(change)
    if change.get("r", 1) is None:
        del config["r"]
    (peft / "adapter_config.json").write_text(json.dumps(config))
    save = tmp_path / "mg"
    line = _refused(capsys, [*HF2MG, "--load-dir", str(models["base"]["hf"]), "--save-dir", str(save),
                             "--lora-load", str(peft)],
                    [peft], save)
    assert line.startswith(f"error: {peft / 'adapter_config.json'}: {words}"), line


@pytest.mark.parametrize("mode", ["mg2hf_merge", "save_lora_to_hf", "mg2mg"])
def test_a_megatron_adapter_of_another_model_is_refused_before_writing(models, tmp_path, capsys, mode):
    base, wide = models["base"], models["wide"]
    save = tmp_path / "out"
    to = {"mg2hf_merge": "hf", "save_lora_to_hf": "hf", "mg2mg": "mg"}[mode]
    extra = ["--save-lora-to-hf"] if mode == "save_lora_to_hf" else []
    line = _refused(capsys, ["--load-model-type", "mg", "--save-model-type", to, "--load-dir",
                             str(base["plain"]), "--save-dir", str(save), "--lora-load", str(wide["mg"]),
                             *extra],
                    [base["plain"], wide["mg"]], save)
    assert line == (f"error: {wide['mg']}: decoder.layers.0.mlp.linear_fc1.lora_A.weight has "
                    "shape [4, 48], the base model's layer needs [4, 64]: the adapter belongs to another "
                    "model (or another --lora-r)")


def test_the_adapter_of_the_same_model_still_converts(models, tmp_path, capsys):
    """The check's other side: the adapter trained on this base passes (merge and export)."""
    base = models["base"]
    for extra, save in (([], tmp_path / "merged"), (["--save-lora-to-hf"], tmp_path / "peft")):
        assert main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(base["plain"]),
                     "--save-dir", str(save), "--lora-load", str(base["mg"]), *extra, "--no-progress"]) == 0
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    # --overwrite replaces this tool's own earlier adapter export
    assert main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(base["plain"]),
                 "--save-dir", str(tmp_path / "peft"), "--lora-load", str(base["mg"]), "--save-lora-to-hf",
                 "--overwrite", "--no-progress"]) == 0, capsys.readouterr().err


def test_a_lora_load_adapter_of_another_rank_or_targets_blames_the_lora_load_file(models):
    """Training/inference with --lora-load: the adapter's own mismatch names --lora-load's file."""
    import argparse

    import torch

    from mindspeed_llm.lora import LoraConfig, apply_lora
    from mindspeed_llm.lora.checkpoint import AdapterSource, weights_with_adapter
    from mindspeed_llm.lora.keys import is_lora_key
    from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
    from tests.checkpoint.test_record import _model
    from tests.ops.megatron_env import single_process_model_parallel

    lora = LoraConfig(r=4, alpha=8.0, target_modules=("linear_qkv",))
    base_file = "/base/iter_0000001/mp_rank_00/model_optim_rng.pt"
    lora_file = "/lora/iter_0000002/mp_rank_00/model_optim_rng.pt"
    qkv_a = "decoder.layers.0.self_attention.linear_qkv.lora_A.weight"
    with single_process_model_parallel():
        chunk = _model(models["base"]["hf"])
        apply_lora(chunk, lora)
        own = {k: v for k, v in chunk.state_dict().items() if torch.is_tensor(v)}
        base = {k: v for k, v in own.items() if not is_lora_key(k)}
        rank_2 = {k: torch.zeros(2, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 2)
                  for k, v in own.items() if is_lora_key(k)}
        proj = {k.replace("linear_qkv", "linear_proj"): v for k, v in rank_2.items()}
        cases = ((rank_2, f"{qkv_a} has shape [2, 64], this launch's layer needs [4, 64]: pass the adapter's "
                          "--lora-r"),
                 (proj, f"lacks {qkv_a}: its adapter was trained on other layers"))
        for adapter, words in cases:
            state = {"model": adapter, "args": argparse.Namespace(lora_alpha=8.0)}
            source = AdapterSource(path=lora_file, state=state, iteration=2)
            with pytest.raises(CheckpointError) as err:
                weights_with_adapter(lora, chunk, base, (base_file, {"model": base}), source, "model", 1)
            assert str(err.value).startswith(lora_file) and words in str(err.value)
            assert base_file not in str(err.value)
