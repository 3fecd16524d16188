"""The first lr-0 fp32 step's lm loss of pretrain_gpt.py on a converted MoE checkpoint equals transformers'.

Qwen3-MoE (softmax router, top-k renormalised: norm_topk_prob, q/k norms) at TP1, TP2, PP2, EP2 (alltoall
dispatcher) and TP2 x EP2 (allgather, the default); Mixtral at EP2 with the allgather dispatcher; Qwen2-MoE
(top-k not renormalised, a shared expert behind a sigmoid gate, qkv bias) at TP2. The dataset is one document
of SEQ tokens: megatron-core's GPTDataset cuts samples of SEQ + 1 tokens every SEQ tokens from the document
repeated epoch after epoch, so every sample, on every data-parallel rank (the EP runs have two), is the
document followed by its first token, and transformers' loss on that is the reference (relative 2e-5; the aux
loss is not added in: --moe-aux-loss-coeff 0). (A document of SEQ + 1 tokens would give the second sample its
last token followed by its first SEQ: a different loss, averaged in at data parallel 2.) Teeth: a dropped
expert or an ignored norm_topk_prob moves transformers' own loss on this document by far more than the
tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.e2e.pretrain_helpers import VOCAB, losses, model_flags, start_pretrain, train_flags
from tests.helpers.tiny_moe import make_moe_hf_model

pytestmark = pytest.mark.slow

SEQ = 64
REL = 2e-5
# name: (model, TP, PP, EP, extra flags)
RUNS = {
    "qwen3_moe_tp1": ("qwen3_moe", 1, 1, 1, []),
    "qwen3_moe_tp2": ("qwen3_moe", 2, 1, 1, ["--sequence-parallel"]),
    "qwen3_moe_pp2": ("qwen3_moe", 1, 2, 1, []),
    "qwen2_moe_tp2": ("qwen2_moe", 2, 1, 1, ["--sequence-parallel"]),
    "qwen3_moe_ep2": ("qwen3_moe", 1, 1, 2, ["--moe-token-dispatcher-type", "alltoall"]),
    "qwen3_moe_tp2ep2": ("qwen3_moe", 2, 1, 2, ["--sequence-parallel"]),
    "mixtral_ep2": ("mixtral", 1, 1, 2, ["--moe-token-dispatcher-type", "allgather"]),
}


def moe_model_flags(hf_dir) -> list[str]:
    """pretrain_gpt.py's flags for an MoE HF model (Megatron-LM's names; MindSpeed-LLM's where it has its
    own: --moe-intermediate-size, --n-shared-experts, --shared-expert-gate, --norm-topk-prob)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = cfg["architectures"][0]
    experts = cfg.get("num_experts", cfg.get("num_local_experts"))
    flags = [*model_flags(hf_dir), "--num-experts", experts, "--moe-router-topk", cfg["num_experts_per_tok"],
             "--moe-intermediate-size", cfg.get("moe_intermediate_size", cfg["intermediate_size"])]
    if arch == "Qwen3MoeForCausalLM":
        flags.append("--qk-layernorm")
    if arch == "Qwen2MoeForCausalLM":
        flags += ["--add-qkv-bias", "--moe-shared-expert-intermediate-size",
                  cfg["shared_expert_intermediate_size"], "--shared-expert-gate"]
    if arch == "MixtralForCausalLM" or cfg.get("norm_topk_prob"):
        flags.append("--norm-topk-prob")
    else:
        flags.append("--moe-router-pre-softmax")
    return [str(f) for f in flags]


def _document(prefix, seed: int = 0) -> tuple[str, list[int]]:
    """An indexed dataset of one document of SEQ ids (3..VOCAB-2: no EOD, nothing masked); returns its prefix
    and every sample's SEQ + 1 ids (the document and its first id again: the next epoch's copy begins)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    ids = np.random.default_rng(seed).integers(3, VOCAB - 1, SEQ).astype(np.int64)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.add_document(torch.from_numpy(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix), [*ids.tolist(), int(ids[0])]


def _hf_model(folder, **config_changes):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for key, value in config_changes.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def _hf_loss(model, ids: list[int]) -> float:
    with torch.no_grad():
        t = torch.tensor([ids])
        return model(t, labels=t).loss.item()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mindspeed_llm.convert.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("moe_loss_parity")
    data, ids = _document(root / "data" / "one_document")
    hf = {kind: make_moe_hf_model(root / kind, kind, num_layers=2, **({"norm_topk_prob": True}
                                                                     if kind == "qwen3_moe" else {}))
          for kind in ("qwen3_moe", "qwen2_moe", "mixtral")}
    refs = {kind: _hf_loss(_hf_model(folder), ids) for kind, folder in hf.items()}
    launched = {}
    for name, (kind, tp, pp, ep, extra) in RUNS.items():
        ckpt = convert(ConvertOptions("hf", "mg", str(hf[kind]), str(root / name), target_tp=tp, target_pp=pp,
                                      target_ep=ep, progress=False, add_qkv_bias=kind == "qwen2_moe"))
        world = max(tp * pp, tp * ep, ep)  # data parallel fills EP where TP x PP is smaller
        flags = [*moe_model_flags(hf[kind]), *train_flags(data, iters=1, gbs=world // (tp * pp), seq=SEQ,
                                                          lr=0.0),
                 "--lr-warmup-iters", "0", "--tensor-model-parallel-size", str(tp),
                 "--pipeline-model-parallel-size", str(pp), "--expert-model-parallel-size", str(ep),
                 "--load", ckpt, "--finetune", *extra]
        launched[name] = (flags, world)
    return {"hf": hf, "ids": ids, "refs": refs, "launched": launched, "data": data, "root": root}


class _Tokenizer:
    """What megatron-core's GPTDataset reads from a tokenizer (EOD 127: not in the document)."""

    vocab_size = VOCAB
    eod = VOCAB - 1
    unique_identifiers = {"class": "moe_loss_parity"}


def test_every_sample_is_the_reference_sequence(setup):
    """megatron-core's GPTDataset, built as pretrain_gpt.py builds it, yields the reference ids as every
    sample of the EP runs' global batch (and beyond): the data-parallel ranks all see what transformers
    scores."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(random_seed=1234, sequence_length=SEQ, blend=([setup["data"]], None),
                              split="100,0,0", path_to_cache=str(setup["root"] / "cache"),
                              tokenizer=_Tokenizer(),
                              reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                              create_attention_mask=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [4, 0, 0], lambda: True, config).build()
    ids = torch.tensor(setup["ids"])
    for i in range(4):
        assert torch.equal(train[i]["tokens"], ids[:-1]) and torch.equal(train[i]["labels"], ids[1:]), i


def test_the_tolerance_has_teeth(setup):
    """Dropping one expert (its output zeroed) or ignoring Qwen3-MoE's norm_topk_prob moves transformers'
    loss on this document by far more than the tolerance."""
    ids = setup["ids"]
    for kind in ("qwen3_moe", "mixtral", "qwen2_moe"):
        model = _hf_model(setup["hf"][kind])
        with torch.no_grad():
            for layer in model.model.layers:
                experts = layer.mlp.experts
                if hasattr(experts, "down_proj"):
                    experts.down_proj[1].zero_()  # fused (transformers 5's own modules)
                else:
                    experts[1].down_proj.weight.zero_()
        moved = abs(_hf_loss(model, ids) - setup["refs"][kind]) / setup["refs"][kind]
        assert moved > 20 * REL, (kind, moved)
    unnormalised = _hf_loss(_hf_model(setup["hf"]["qwen3_moe"], norm_topk_prob=False), ids)
    moved = abs(unnormalised - setup["refs"]["qwen3_moe"]) / setup["refs"]["qwen3_moe"]
    assert moved > 20 * REL, moved


def test_first_step_loss_equals_transformers(setup):
    """Every layout's first lr-0 step (the launches share the two cores, two at a time)."""
    names = list(RUNS)
    outputs = {}
    for i in range(0, len(names), 2):
        started = {n: start_pretrain(*setup["launched"][n][0], nproc=setup["launched"][n][1], timeout=400)
                   for n in names[i:i + 2]}
        outputs.update({n: run.result().stdout for n, run in started.items()})
    for name, out in outputs.items():
        kind = RUNS[name][0]
        got = losses(out)
        assert list(got) == [1], out[-3000:]
        rel = abs(got[1] - setup["refs"][kind]) / setup["refs"][kind]
        print(f"{name}: pretrain_gpt {got[1]:.7e} transformers {setup['refs'][kind]:.7e} relative {rel:.2e}")
        assert rel <= REL, (name, got[1], setup["refs"][kind], rel)
