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
import os
import shutil

import numpy as np
import pytest
import torch

from tests.e2e.pretrain_helpers import (
    VOCAB,
    convert_hf_to_mg,
    loss_strings,
    losses,
    make_hf_model,
    model_flags,
    own_index_cache,
    run_pretrain,
    start_pretrain,
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
        ckpts = {
            lay: convert_hf_to_mg(hf, root / f"{name}_{lay}", tp, pp) for lay, (tp, pp) in LAYOUTS.items()
        }
        out[name] = {"hf": hf, "ckpts": ckpts, "ref": _hf_loss(hf, ids)}
    setup = {"data": data, "ids": ids, "models": out}
    # The single-process (TP1) launches start now, together: they share the two cores.
    setup["tp1_runs"] = {name: start_pretrain(*_first_step_flags(setup, name, "tp1")) for name in MODELS}
    return setup


def _first_step_flags(setup, name: str, layout: str) -> list[str]:
    """One step at lr 0 of ``name``'s checkpoint converted for ``layout``."""
    m = setup["models"][name]
    tp, pp = LAYOUTS[layout]
    flags = [
        *model_flags(m["hf"]),
        *train_flags(setup["data"], iters=1, gbs=1, seq=SEQ, lr=0.0),
        *own_index_cache(os.path.dirname(setup["data"])),
        "--lr-warmup-iters",
        "0",
    ]
    if name == "llama31_scaled" and layout == "pp2":  # MindSpeed's flags; the rest comes from the checkpoint
        flags += ["--rope-scaling-type", "llama3", "--rope-scaling-factor", "4"]
    return [*flags, "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
            "--load", str(m["ckpts"][layout]), "--finetune"]


def test_llama3_parameters_matter_for_this_sequence(setup):
    """Without the checkpoint's original_max_position_embeddings (Llama-3.1's 8192) the loss is another
    one."""
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
    if layout == "tp1":
        out = setup["tp1_runs"][name].result().stdout
    else:
        out = run_pretrain(*_first_step_flags(setup, name, layout), nproc=tp * pp)
    got = losses(out)
    assert list(got) == [1], out[-3000:]
    rel = abs(got[1] - m["ref"]) / m["ref"]
    print(f"{name} {layout}: pretrain_gpt {got[1]:.7e} transformers {m['ref']:.7e} relative {rel:.2e}")
    assert rel <= REL, (got[1], m["ref"], rel)


def test_qwen3_trains_alike_at_tp1_tp2_pp2_and_resumes_exactly(setup, tmp_path):
    """Four steps at lr 3e-3: TP2 (sequence parallel) and PP2 follow TP1; so does TP2 with the output layer
    and the loss fused over blocks of tokens (``--loss-compute-mode chunk``, blocks of 48, 48 and 32 of the
    128 tokens that sequence parallelism gathers; the untied output weight trains); the q/k norms train and
    stay equal on both TP ranks (megatron-core all-reduces their gradients over TP); resuming TP2 at 2
    repeats 3..4 exactly."""
    m = setup["models"]["qwen3_untied"]
    flags = [*model_flags(m["hf"]), *train_flags(setup["data"], iters=4, gbs=2, seq=SEQ, lr=3e-3)]

    def run(layout, *extra, launch=run_pretrain):
        tp, pp = LAYOUTS[layout]
        return launch(*flags, "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size",
                      str(pp), *own_index_cache(tmp_path), *extra, nproc=tp * pp)

    # TP1 and PP2 start in the background while TP2 runs (independent launches share the two cores).
    tp1_run = run("tp1", "--load", str(m["ckpts"]["tp1"]), "--finetune", launch=start_pretrain)
    pp2_run = run("pp2", "--load", str(m["ckpts"]["pp2"]), "--finetune", launch=start_pretrain)
    chunk_run = run("tp2", "--sequence-parallel", "--loss-compute-mode", "chunk", "--loss-chunk-size", "48",
                    "--load", str(m["ckpts"]["tp2"]), "--finetune", launch=start_pretrain)
    save = tmp_path / "tp2_save"
    tp2_out = run(
        "tp2",
        "--sequence-parallel",
        "--load",
        str(m["ckpts"]["tp2"]),
        "--finetune",
        "--save",
        str(save),
        "--save-interval",
        "2",
    )
    one = losses(tp1_run.result().stdout)
    assert sorted(one) == [1, 2, 3, 4] and one[4] < one[1]
    chunk_out = chunk_run.result().stdout
    # the start-up line of feature patches: the fused path did run, and only in that launch
    assert "GPTModel._postprocess" in chunk_out and "GPTModel._postprocess" not in tp2_out
    for name, got in (("tp2", losses(tp2_out)), ("pp2", losses(pp2_run.result().stdout)),
                      ("tp2 chunk", losses(chunk_out))):
        assert sorted(got) == [1, 2, 3, 4]
        for it in got:
            assert abs(got[it] - one[it]) / one[it] <= REL, (name, it, got[it], one[it])
    ranks = [
        torch.load(save / "iter_0000004" / f"mp_rank_0{r}" / "model_optim_rng.pt", weights_only=False)[
            "model"
        ]
        for r in (0, 1)
    ]
    start = torch.load(m["ckpts"]["tp2"] / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)["model"]
    qk = [k for k in ranks[0] if "q_layernorm" in k or "k_layernorm" in k]
    assert len(qk) == 2 * 4
    for key in qk:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert not torch.equal(ranks[0][key], start[key]), f"{key} did not train"

    at2 = tmp_path / "at2"
    shutil.copytree(save / "iter_0000002", at2 / "iter_0000002")
    (at2 / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = run("tp2", "--sequence-parallel", "--load", str(at2))
    assert loss_strings(resumed) == {it: s for it, s in loss_strings(tp2_out).items() if it > 2}
