"""LoRA on a mixture-of-experts model equals peft, and padding does not move the aux loss, through
posttrain_gpt.py --stage sft on a tiny Qwen3-MoE at EP2 (two ranks: data parallel 2 for the dense part, the
experts split over them; the alltoall dispatcher).

The reference is peft on transformers' Qwen3MoeForCausalLM with an adapter on q/k/v/o (made by peft, A shared
inside q/k/v as megatron's fused linear_qkv holds it, imported by convert_ckpt.py), plus the Switch
load-balancing loss computed here from transformers' own router logits over the real tokens (megatron-core's
``padding_mask``: padding and the -100 prompt part left out), E / (k T^2) * sum_e count_e * sum_t p_te per MoE
layer and micro-batch. The dataset is exactly one global batch of four samples, one per micro-batch, so
whatever their order: the lm loss is token-weighted over all of them; the logged aux loss is the mean over
samples (micro-batches and data-parallel ranks) and layers; and the gradient is megatron-core's with
--calculate-per-token-loss (SFT's): of (sum of token losses + coeff * sum over samples and layers of
aux * the sample's real tokens) / all learned tokens.

Three launches:
- ``short``: --seq-length 48, two SGD steps at lr 1 (the adapter after the first is A - gradient; SGD's
  momentum buffer starts as the gradient), adapter-only saves (--lora-ckpt-filter) at 1 and 2; iteration 1's
  adapter is exported to a peft folder by convert_ckpt.py --save-lora-to-hf;
- ``long``: the same samples padded to --seq-length 96, one step (beside ``short``);
- ``resumed``: from iteration 1's adapter checkpoint through --lora-load (EP rank files, SGD's momentum):
  its step 2 and saved adapter equal ``short``'s bit for bit.

Checked: the first step's lm loss equals peft's (relative 1e-5); the logged load-balancing loss equals the
hand computation and is the same padded to 48 or 96 (relative 1e-5); the adapter's step equals -(peft's
gradient of lm loss + coeff * aux loss) (relative 1e-5 of the largest entry: the difference of two fp32
adapters); the exported adapter loads in peft and gives the logits of peft's own stepped adapter. Teeth:
the adapter scaling alpha / r doubled, a dropped target (o_proj), padding counted in the aux loss and the aux
loss's gradient left out each move the compared value by far more than its tolerance. Adapters on the experts
are refused with a line (megatron's SequentialMLP/GroupedMLP experts take none: docs/lora.md).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from mindspeed_llm.convert.convert import ConvertOptions, convert
from mindspeed_llm.runtime.checkpoint import layout
from tests.e2e.pretrain_helpers import VOCAB, loss_strings, losses, write_instruction_data
from tests.e2e.test_moe_loss_parity import moe_model_flags
from tests.helpers.launch import StartedTorchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_moe import make_moe_hf_model
from tests.models.lora_helpers import load_peft_model, make_peft_adapter

POSTTRAIN = REPO_ROOT / "posttrain_gpt.py"
SEQ, LONG = 48, 96
LENGTHS = [(6, 20), (10, 14), (4, 30), (12, 18)]  # (prompt, answer) tokens: every sample fits in SEQ
PAD = VOCAB - 1  # NullTokenizer's EOD, the pad id of SFT batches (the samples use ids 3..VOCAB-2)
COEFF = 0.1  # --moe-aux-loss-coeff: large enough that its gradient shows in the adapter's
REL = 1e-5
GRAD_REL = 1e-5  # measured 6e-7
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "--lora-r", "4", "--lora-alpha", "8"]
_AUX = re.compile(r"iteration\s+1/.*? load_balancing_loss: (\S+) \|")
_AUX_ANY = re.compile(r"iteration\s+\d+/.*? load_balancing_loss: (\S+) \|")


def _samples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    out = []
    for prompt, answer in LENGTHS:
        ids = rng.integers(3, PAD, prompt + answer)
        out.append((ids, np.concatenate([np.full(prompt, -100), ids[prompt:]])))
    return out


def _launch_flags(hf, data: str, ckpt: str, seq: int, iters: int = 1, finetune: bool = True) -> list[str]:
    settings = {"--stage": "sft", "--prompt-type": "qwen", "--tokenizer-type": "NullTokenizer",
                "--vocab-size": VOCAB - 1, "--data-path": data, "--split": "100,0,0", "--seq-length": seq,
                "--micro-batch-size": 1, "--global-batch-size": 4, "--train-iters": iters,
                "--optimizer": "sgd", "--lr": 1.0, "--min-lr": 1.0, "--lr-warmup-iters": 0,
                "--weight-decay": 0.0, "--clip-grad": 0.0,
                "--seed": 1234, "--log-interval": 1, "--eval-iters": 0, "--num-workers": 0,
                "--expert-model-parallel-size": 2, "--moe-router-load-balancing-type": "aux_loss",
                "--moe-aux-loss-coeff": COEFF, "--load": ckpt}
    flags = [str(x) for kv in settings.items() for x in kv]
    return [*moe_model_flags(hf), *flags, *(["--finetune"] if finetune else []), *LORA]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_lora")
    hf, adapter = root / "hf", root / "peft"
    make_moe_hf_model(hf, "qwen3_moe", num_layers=2, norm_topk_prob=True)
    make_peft_adapter(str(hf), str(adapter), targets=ATTENTION)
    ckpt = convert(ConvertOptions("hf", "mg", str(hf), str(root / "mg"), target_ep=2, lora_load=str(adapter),
                                  progress=False))
    samples = _samples()
    data = write_instruction_data(root / "data" / "sft", [(i, np.ones_like(i), lab) for i, lab in samples])
    save, at_1, resumed = root / "save", root / "adapter_at_1", root / "resumed"
    saving = ["--save-interval", "1", "--lora-ckpt-filter"]
    short = StartedTorchrun(POSTTRAIN, *_launch_flags(hf, data, ckpt, SEQ, iters=2), "--save", str(save),
                            *saving, nproc=2, timeout=400)
    long = StartedTorchrun(POSTTRAIN, *_launch_flags(hf, data, ckpt, LONG), nproc=2, timeout=400)
    out = {"short": short.result().stdout}
    shutil.copytree(save / "iter_0000001", at_1 / "iter_0000001")
    layout.write_tracker(at_1, 1)
    resume = StartedTorchrun(POSTTRAIN, *_launch_flags(hf, data, ckpt, SEQ, iters=2, finetune=False),
                             "--lora-load", str(at_1), "--save", str(resumed), *saving, nproc=2, timeout=400)
    out["long"], out["resumed"] = long.result().stdout, resume.result().stdout
    exported = convert(ConvertOptions("mg", "hf", ckpt, str(root / "exported"), lora_load=str(at_1),
                                      save_lora_to_hf=True, hf_dir=str(hf), progress=False))
    return {"root": root, "hf": hf, "adapter": adapter, "samples": samples, "out": out, "exported": exported,
            "ckpt": ckpt, "save": save, "resumed": resumed, "reference": peft_reference(hf, adapter, samples)}


def _set_scaling(model, scale: float, drop: tuple[str, ...]) -> None:
    """Every adapter's alpha / r times ``scale``; the ``drop`` targets' adapters off (teeth)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
            module.scaling["default"] *= 0.0 if name.rsplit(".", 1)[-1] in drop else scale


def peft_reference(hf, adapter, samples, *, coeff: float = COEFF, scale: float = 1.0,
                   drop: tuple[str, ...] = ()) -> dict:
    """peft's first step on the samples (each padded to SEQ, as the short launch's micro-batches): the lm loss
    over the learned tokens, the mean load-balancing loss over the real tokens (and, for the teeth, over every
    token), and the adapters' gradients of the objective in the module docstring."""
    model = load_peft_model(str(hf), str(adapter), trainable=True)
    _set_scaling(model, scale, drop)
    layers = model.base_model.model.model.layers
    config = model.base_model.model.config
    experts, topk = config.num_experts, config.num_experts_per_tok
    captured: list[torch.Tensor] = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
             for layer in layers]
    def switch_loss(logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float().softmax(-1)
        counts = torch.zeros(experts).index_add_(0, scores.detach().topk(topk, -1).indices.reshape(-1),
                                                 torch.ones(scores.shape[0] * topk))
        return experts / (topk * scores.shape[0] ** 2) * (scores.sum(0) * counts).sum()

    total, count, weighted_aux, aux, aux_all = torch.zeros(()), 0, torch.zeros(()), [], []
    for ids, labels in samples:
        padded = np.concatenate([ids, np.full(SEQ - len(ids), PAD)])
        captured.clear()
        logits = model(input_ids=torch.tensor(padded)[None]).logits[0, : len(ids) - 1].float()
        target = torch.tensor(labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
        real = torch.zeros(SEQ, dtype=torch.bool)  # position t is real when its label (token t+1) is learned
        real[: len(ids) - 1] = target != -100
        for router_logits in captured:
            aux.append(switch_loss(router_logits[real]))
            weighted_aux = weighted_aux + aux[-1] * int(real.sum())
            aux_all.append(float(switch_loss(router_logits.detach())))
    for hook in hooks:
        hook.remove()
    lm = total / count
    ((total + coeff * weighted_aux) / count).backward()
    grads = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            parts = name.split(".")
            factor = "A" if "lora_A" in parts else "B"
            module = parts[parts.index(f"lora_{factor}") - 1]
            grads[int(parts[parts.index("layers") + 1]), module, factor] = p.grad.detach().clone()
    return {"lm": float(lm.detach()), "aux": float(sum(aux).detach()) / len(aux), "grads": grads,
            "aux_all_tokens": sum(aux_all) / len(aux_all)}


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def _max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.slow
def test_first_step_lm_loss_and_aux_loss_equal_peft_and_the_hand_computation(runs):
    ref = runs["reference"]
    for name in ("short", "long"):
        out = runs["out"][name]
        got = losses(out)
        assert list(got) == ([1, 2] if name == "short" else [1]), out[-3000:]
        aux = float(_AUX.search(out).group(1))
        print(f"{name}: lm {got[1]:.7e} (peft {ref['lm']:.7e}), aux {aux:.7e} (hand {ref['aux']:.7e}; "
              f"padding counted {ref['aux_all_tokens']:.7e})")
        assert _rel(got[1], ref["lm"]) <= REL, (name, got[1], ref["lm"])
        assert _rel(aux, ref["aux"]) <= REL, (name, aux, ref["aux"])
        assert "trainable LoRA parameters" in out
    # teeth: counting the padding (and prompt) tokens moves the aux loss far beyond the tolerance
    assert _rel(ref["aux_all_tokens"], ref["aux"]) > 100 * REL, ref


@pytest.mark.slow
def test_the_tolerances_have_teeth(runs):
    """alpha / r doubled or the o_proj adapter dropped moves peft's loss; the aux loss's gradient left out
    moves the adapter's gradient."""
    ref, args = runs["reference"], (runs["hf"], runs["adapter"], runs["samples"])
    scaled = _rel(peft_reference(*args, scale=2.0)["lm"], ref["lm"])
    dropped = _rel(peft_reference(*args, drop=("o_proj",))["lm"], ref["lm"])
    without_aux = peft_reference(*args, coeff=0.0)["grads"]
    no_aux_grad = max(_max_rel(without_aux[k], g) for k, g in ref["grads"].items())
    print(f"teeth: alpha/r doubled {scaled:.2e}, o_proj dropped {dropped:.2e} (loss, relative); aux gradient "
          f"left out {no_aux_grad:.2e} (gradient, relative to its largest entry)")
    assert scaled > 20 * REL and dropped > 20 * REL and no_aux_grad > 20 * GRAD_REL


def _expected_step(grads: dict, layer: int) -> dict[str, torch.Tensor]:
    """The SGD step of each exported peft tensor: minus the gradient, q/k/v's shared A summing its users'."""
    shared_a = -(grads[layer, "q_proj", "A"] + grads[layer, "k_proj", "A"] + grads[layer, "v_proj", "A"])
    step = {f"{m}.lora_B": -grads[layer, m, "B"] for m in ATTENTION}
    step.update({f"{m}.lora_A": shared_a for m in ("q_proj", "k_proj", "v_proj")})
    step["o_proj.lora_A"] = -grads[layer, "o_proj", "A"]
    return step


@pytest.mark.slow
def test_adapter_gradient_equals_peft_and_the_export_loads_in_peft(runs):
    from safetensors.torch import load_file

    before = load_file(str(runs["adapter"] / "adapter_model.safetensors"))
    after = load_file(f"{runs['exported']}/adapter_model.safetensors")
    assert after.keys() == before.keys()
    config = json.loads((runs["adapter"] / "adapter_config.json").read_text())
    exported_config = json.loads(open(f"{runs['exported']}/adapter_config.json").read())
    assert (exported_config["r"], exported_config["lora_alpha"]) == (config["r"], config["lora_alpha"])
    stepped, worst = {}, 0.0
    for layer in range(2):
        for key, want in _expected_step(runs["reference"]["grads"], layer).items():
            name = f"base_model.model.model.layers.{layer}.self_attn.{key}.weight"
            got = after[name] - before[name]
            assert _max_rel(got, want) <= GRAD_REL, (name, _max_rel(got, want))
            worst = max(worst, _max_rel(got, want))
            stepped[name] = before[name] + want
    # the exported adapter in peft gives the logits of peft's own adapter stepped by its own gradient
    ids = torch.tensor(runs["samples"][0][0])[None]
    ours = load_peft_model(str(runs["hf"]), runs["exported"]).eval()
    theirs = load_peft_model(str(runs["hf"]), str(runs["adapter"])).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            key = name.replace(".default", "")
            if key in stepped:
                p.copy_(stepped[key])
        got, want = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    print(f"adapter step vs -peft gradient: worst relative {worst:.2e}; exported adapter's logits in peft: "
          f"relative {_max_rel(got, want):.2e}")
    assert _max_rel(got, want) <= REL, _max_rel(got, want)


@pytest.mark.slow
def test_resume_through_lora_load_at_ep2_is_bitwise(runs):
    short, resumed = runs["out"]["short"], runs["out"]["resumed"]
    assert loss_strings(resumed) == {2: loss_strings(short)[2]}, resumed[-3000:]
    assert _AUX_ANY.findall(resumed) == _AUX_ANY.findall(short)[1:]
    for ep_rank in range(2):  # each EP rank saved its own file (mp_rank_00_00E), adapter tensors only
        unbroken = layout.load_rank_state(runs["save"], 2, 0, 0, 1, ep_rank=ep_rank, ep_size=2)["model"]
        again = layout.load_rank_state(runs["resumed"], 2, 0, 0, 1, ep_rank=ep_rank, ep_size=2)["model"]
        assert unbroken and all(".lora_" in k for k in unbroken), list(unbroken)
        assert again.keys() == unbroken.keys()
        for key, value in unbroken.items():
            assert torch.equal(again[key], value), (ep_rank, key)


@pytest.mark.slow
def test_distributed_optimizer_adapter_saves_resume_at_ep2(runs, tmp_path):
    """Adam with --use-distributed-optimizer and --lora-ckpt-filter at EP2: the experts are frozen, so only
    the dense optimizer's data-parallel rank 0 holds distrib_optim.pt (EP rank 1's folder has none: the save
    once failed looking for it there), and a resume from iteration 1 repeats step 2 and its adapter bit for
    bit."""
    def launch(save, *extra, finetune=True):
        flags = _launch_flags(runs["hf"], str(runs["root"] / "data" / "sft"), runs["ckpt"], SEQ, iters=2,
                              finetune=finetune)
        flags[flags.index("sgd")] = "adam"
        return StartedTorchrun(POSTTRAIN, *flags, "--use-distributed-optimizer", "--save", str(save),
                               "--save-interval", "1", "--lora-ckpt-filter", *extra, nproc=2,
                               timeout=400).result().stdout

    save, at_1, resumed = tmp_path / "save", tmp_path / "at_1", tmp_path / "resumed"
    unbroken = launch(save)
    assert sorted(p.parent.name for p in save.glob("iter_0000001/*/distrib_optim.pt")) == ["mp_rank_00_000"]
    shutil.copytree(save / "iter_0000001", at_1 / "iter_0000001")
    layout.write_tracker(at_1, 1)
    again = launch(resumed, "--lora-load", str(at_1), finetune=False)
    assert loss_strings(again) == {2: loss_strings(unbroken)[2]}, again[-3000:]
    for ep_rank in range(2):
        want = layout.load_rank_state(save, 2, 0, 0, 1, ep_rank=ep_rank, ep_size=2)["model"]
        got = layout.load_rank_state(resumed, 2, 0, 0, 1, ep_rank=ep_rank, ep_size=2)["model"]
        assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items()), ep_rank
    assert (resumed / "iter_0000002" / "mp_rank_00_000" / "distrib_optim.pt").read_bytes() == (
        save / "iter_0000002" / "mp_rank_00_000" / "distrib_optim.pt").read_bytes()


@pytest.mark.slow
def test_merged_export_equals_peft_merge_and_unload(runs, tmp_path):
    """The converted checkpoint (base + the imported adapter) merged back to HF: peft's merge_and_unload(),
    tensor for tensor (the experts unchanged)."""
    from transformers import AutoModelForCausalLM

    merged = convert(ConvertOptions("mg", "hf", runs["ckpt"], str(tmp_path / "merged"),
                                    hf_dir=str(runs["hf"]), progress=False))
    got = dict(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).named_parameters())
    want = dict(load_peft_model(str(runs["hf"]), str(runs["adapter"])).merge_and_unload().named_parameters())
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_adapters_on_the_experts_are_refused_with_a_line(tmp_path):
    from mindspeed_llm.config.flags import ArgumentError, parse_args
    from mindspeed_llm.config.validate import validate_args
    from mindspeed_llm.lora.config import LoraError

    base = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 "
            "--lr 1e-3 --swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 "
            "--data-path d_text_document --num-experts 4 --moe-router-topk 2 "
            "--lora-target-modules linear_qkv linear_fc1")
    with pytest.raises(ArgumentError) as exc:
        validate_args(parse_args(base.split()), 1)
    line = str(exc.value)
    assert "--lora-target-modules linear_fc1" in line and "--num-experts 4" in line and "\n" not in line, line
    assert "--lora-target-modules linear_qkv linear_proj" in line, line
    # a peft adapter on an MoE model's MLP (Qwen2-MoE's shared expert) is refused before anything is written
    hf, adapter = tmp_path / "hf", tmp_path / "peft"
    make_moe_hf_model(hf, "qwen2_moe", num_layers=1)
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model

    from tests.helpers.tiny import load_hf_model

    get_peft_model(load_hf_model(str(hf)), PeftConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj",
                                                                           "gate_proj", "up_proj"])
                   ).save_pretrained(str(adapter))
    with pytest.raises(LoraError, match=r"adapts linear_fc1: adapters on the MLP/expert layers"):
        convert(ConvertOptions("hf", "mg", str(hf), str(tmp_path / "mg"), lora_load=str(adapter),
                               progress=False, add_qkv_bias=True))
    assert not (tmp_path / "mg").exists()
