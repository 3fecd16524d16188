"""Long-context RoPE (YaRN, LongRoPE) equals transformers beyond the original window.

Two tiny random models made by transformers, both pretrained (in their configs) on a 32-token window and
extended to 128:

- a Qwen3 with YaRN (factor 4, original window 32): the first lr-0 fp32 step of pretrain_gpt.py on one
  96-token document equals transformers' loss on it (relative 2e-6) at TP2, PP2 (launched with
  MindSpeed-LLM's flags, completed from the checkpoint), ring CP2 and Ulysses CP2; a launch whose
  ``--rope-scaling-factor`` contradicts the checkpoint is refused with one line; posttrain_gpt.py's SFT
  loss on instruction samples of up to 64 tokens equals transformers' (as tests/e2e/test_sft.py computes
  it: YaRN at TP1, beyond the window); inference.py's greedy tokens equal transformers' ``generate`` up to
  position 64;
- a Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``) with LongRoPE: the same on a 32-token document (short
  factors: within the window) and a 64-token one (long factors: beyond it); inference.py's greedy tokens
  equal ``generate``'s for a prompt inside the window whose generation crosses it (short factors, then the
  whole text again with the long ones) and for a prompt already beyond it, generated as one batch.

Both convert back (mg->hf, without the source folder: config.json written from the checkpoint's record)
to a folder whose transformers logits equal the original's. Teeth: transformers' loss with the scaling
ignored (plain RoPE; YaRN without its attention factor; LongRoPE without its switch) is another one by
far more than the tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mindspeed_llm.convert import ConvertOptions, convert
from tests.e2e.pretrain_helpers import (
    PRETRAIN,
    VOCAB,
    convert_hf_to_mg,
    losses,
    make_hf_model,
    model_flags,
    own_index_cache,
    start_pretrain,
    train_flags,
    write_instruction_data,
)
from tests.e2e.test_sft import POSTTRAIN, _samples, hf_token_loss, sft_flags
from tests.helpers.launch import Started, StartedTorchrun
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny import save_word_tokenizer
from tests.inference.helpers import INFERENCE, hf_continuation, parse_outputs

pytestmark = pytest.mark.slow

REL = 2e-6
ORIGINAL = 32  # the window both models were "pretrained" on
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}
YARN_SEQ = 96
PHI_SEQS = {"short": ORIGINAL, "long": 2 * ORIGINAL}  # LongRoPE switches beyond ORIGINAL positions
SHORT_FACTOR = [1.0 + 0.05 * i for i in range(8)]  # head_dim 16: 8 frequencies
LONG_FACTOR = [1.0 + 1.5 * i for i in range(8)]
PROMPT = " ".join(f"w{i}" for i in range(5, 29))  # 24 tokens; with 40 new ones generation reaches 64
NEW_TOKENS = 40
BEYOND_PROMPT = " ".join(f"w{i}" for i in range(30, 70))  # 40 tokens: beyond the window from the start
# TP1 trains through YaRN in the SFT launch (test_yarn_sft_first_step_loss_equals_transformers).
YARN_LAYOUTS = {"tp2": (2, 1, None), "pp2": (1, 2, None),
                "ring_cp2": (1, 1, "megatron_cp_algo"), "ulysses_cp2": (1, 1, "ulysses_cp_algo")}


def _document(prefix, length: int, seed: int) -> tuple[str, list[int]]:
    """An indexed dataset of one document of ``length`` + 1 ids (3..VOCAB-2: no EOD): every sample is it."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    ids = np.random.default_rng(seed).integers(3, VOCAB - 1, length + 1).astype(np.int64)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.add_document(torch.from_numpy(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix), ids.tolist()


def _hf_model(folder, **rope_changes):
    """transformers' model from ``folder`` (eager attention, fp32), its ``rope_parameters`` changed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    if rope_changes:
        config.rope_parameters = {**config.rope_parameters, **rope_changes}
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def _hf_loss(model, ids: list[int]) -> float:
    """Mean next-token loss of ``ids[:-1]`` -> ``ids[1:]``: the sequence pretrain_gpt.py trains on (its
    positions decide LongRoPE's switch)."""
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = model(t[:, :-1]).logits[0]
    return torch.nn.functional.cross_entropy(logits.double(), t[0, 1:]).item()


def _make_phi3(folder) -> None:
    """A random Phi-3 with LongRoPE made by transformers (and a word tokenizer)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4 * ORIGINAL,
                        original_max_position_embeddings=ORIGINAL, initializer_range=0.2, rms_norm_eps=1e-5,
                        rope_scaling={"rope_type": "longrope", "short_factor": SHORT_FACTOR,
                                      "long_factor": LONG_FACTOR},
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    save_word_tokenizer(folder, VOCAB)


def _first_step_flags(hf, ckpt, data, seq, *, tp=1, pp=1, cp=1, algo=None, extra=()) -> list[str]:
    flags = [*model_flags(hf), *train_flags(data, iters=1, gbs=1, seq=seq, lr=0.0), "--lr-warmup-iters", "0",
             "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
             "--load", str(ckpt), "--finetune", *own_index_cache(Path(ckpt).parent), *extra]
    if cp > 1:
        flags += ["--context-parallel-size", str(cp), "--context-parallel-algo", algo]
    return flags


def _first_step(hf, ckpt, data, seq, *, tp=1, pp=1, cp=1, algo=None, extra=()):
    flags = _first_step_flags(hf, ckpt, data, seq, tp=tp, pp=pp, cp=cp, algo=algo, extra=extra)
    return start_pretrain(*flags, nproc=tp * pp * cp, timeout=400)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_rope")
    qwen = make_hf_model(root / "qwen3_yarn", kind="qwen3", num_layers=2, initializer_range=0.2,
                         rope_theta=10000.0, max_position_embeddings=4 * ORIGINAL, rope_scaling=YARN)
    phi = root / "phi3_longrope"
    _make_phi3(phi)
    qwen_ckpts = {(tp, pp): convert_hf_to_mg(qwen, root / f"qwen_tp{tp}pp{pp}", tp, pp)
                  for tp, pp in ((1, 1), (2, 1), (1, 2))}
    phi_ckpt = convert_hf_to_mg(phi, root / "phi_tp1")
    yarn_data, yarn_ids = _document(root / "data" / "yarn", YARN_SEQ, seed=1)
    phi_data = {side: _document(root / "data" / f"phi_{side}", seq, seed=2) for side, seq in PHI_SEQS.items()}
    save_word_tokenizer(root / "tok", 120)

    runs = {}  # every launch starts now: they share the two cores
    for name, (tp, pp, algo) in YARN_LAYOUTS.items():
        extra = ["--rope-scaling-type", "yarn", "--rope-scaling-factor", "4"] if name == "pp2" else []
        runs[name] = _first_step(qwen, qwen_ckpts[tp, pp], yarn_data, YARN_SEQ, tp=tp, pp=pp,
                                 cp=2 if algo else 1, algo=algo, extra=extra)
    contradicting = _first_step_flags(qwen, qwen_ckpts[1, 1], yarn_data, YARN_SEQ,
                                      extra=["--rope-scaling-type", "yarn", "--rope-scaling-factor", "8"])
    # (python -u with OMP_NUM_THREADS=1, as the torchrun launches: forked from their preloaded interpreter)
    runs["contradiction"] = Started([sys.executable, "-u", str(PRETRAIN), *contradicting],
                                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
                                    timeout=400)
    for side, seq in PHI_SEQS.items():
        extra = (["--rope-scaling-type", "longrope", "--rope-scaling-original-max-position-embeddings",
                  str(ORIGINAL)] if side == "long" else [])
        runs[f"phi_{side}"] = _first_step(phi, phi_ckpt, phi_data[side][0], seq, extra=extra)
    samples = _samples()
    rows = [(i, np.ones_like(i), lab) for i, lab in samples]
    sft_data = write_instruction_data(root / "data" / "sft", rows)
    runs["sft"] = StartedTorchrun(POSTTRAIN, *sft_flags(qwen, sft_data), "--load", str(qwen_ckpts[1, 1]),
                                  nproc=1, timeout=400)
    runs["inference"] = StartedTorchrun(
        INFERENCE, *model_flags(qwen), "--load", str(qwen_ckpts[1, 1]), "--tokenizer-name-or-path",
        str(root / "tok"), "--max-new-tokens", str(NEW_TOKENS), "--prompt", PROMPT, "--task", "greedy",
        timeout=400)
    runs["phi_inference"] = StartedTorchrun(
        INFERENCE, *model_flags(phi), "--load", str(phi_ckpt), "--tokenizer-name-or-path", str(root / "tok"),
        "--max-new-tokens", str(NEW_TOKENS), "--prompt", PROMPT, "--prompt", BEYOND_PROMPT,
        "--task", "greedy", timeout=400)

    qwen_model, phi_model = _hf_model(qwen), _hf_model(phi)
    refs = {"yarn": _hf_loss(qwen_model, yarn_ids),
            **{f"phi_{side}": _hf_loss(phi_model, ids) for side, (_, ids) in phi_data.items()}}
    total, count = hf_token_loss(qwen, samples)
    refs["sft"] = total / count
    return {"root": root, "qwen": qwen, "phi": phi, "qwen_model": qwen_model, "phi_model": phi_model,
            "qwen_ckpts": qwen_ckpts, "phi_ckpt": phi_ckpt, "yarn_ids": yarn_ids, "phi_data": phi_data,
            "refs": refs, "runs": runs}


def _loss(setup, name: str) -> float:
    out = setup["runs"][name].result().stdout
    got = losses(out)
    assert list(got) == [1], out[-3000:]
    return got[1]


@pytest.mark.parametrize("layout", list(YARN_LAYOUTS))
def test_yarn_first_step_loss_equals_transformers(setup, layout):
    got, want = _loss(setup, layout), setup["refs"]["yarn"]
    rel = abs(got - want) / want
    print(f"yarn {layout}: pretrain_gpt {got:.8e} transformers {want:.8e} relative {rel:.2e}")
    assert rel <= REL, (got, want, rel)


@pytest.mark.parametrize("side", list(PHI_SEQS))
def test_longrope_first_step_loss_equals_transformers_on_both_sides_of_the_switch(setup, side):
    got, want = _loss(setup, f"phi_{side}"), setup["refs"][f"phi_{side}"]
    rel = abs(got - want) / want
    print(f"longrope {side}: pretrain_gpt {got:.8e} transformers {want:.8e} relative {rel:.2e}")
    assert rel <= REL, (got, want, rel)


def test_yarn_sft_first_step_loss_equals_transformers(setup):
    got, want = _loss(setup, "sft"), setup["refs"]["sft"]
    rel = abs(got - want) / want
    print(f"yarn sft: posttrain_gpt {got:.8e} transformers {want:.8e} relative {rel:.2e}")
    assert rel <= REL, (got, want, rel)


def test_the_scaling_moves_the_loss_far_beyond_the_tolerance(setup):
    """Teeth: what a run ignoring the scaling (or a part of it) would compute."""
    refs, far = setup["refs"], 100 * REL
    plain = {"rope_type": "default"}
    qwen_plain = _hf_loss(_hf_model(setup["qwen"], **plain), setup["yarn_ids"])
    qwen_no_factor = _hf_loss(_hf_model(setup["qwen"], attention_factor=1.0), setup["yarn_ids"])
    assert abs(qwen_plain - refs["yarn"]) / refs["yarn"] > far, (qwen_plain, refs["yarn"])
    assert abs(qwen_no_factor - refs["yarn"]) / refs["yarn"] > far, (qwen_no_factor, refs["yarn"])
    # LongRoPE without its switch: the short factors beyond the window, the long ones within it.
    no_switch = {"long": _hf_model(setup["phi"], long_factor=SHORT_FACTOR),
                 "short": _hf_model(setup["phi"], short_factor=LONG_FACTOR)}
    for side, model in no_switch.items():
        other, want = _hf_loss(model, setup["phi_data"][side][1]), refs[f"phi_{side}"]
        assert abs(other - want) / want > far, (side, other, want)


def test_a_launch_contradicting_the_recorded_scaling_is_refused(setup):
    proc = setup["runs"]["contradiction"].result()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "--rope-scaling-factor 8" in errors[0] and "checkpoint" in errors[0], errors


def test_greedy_inference_beyond_the_window_equals_transformers_generate(setup):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(setup["root"] / "tok"))
    want = hf_continuation(setup["qwen_model"], tok, tok(PROMPT).input_ids, NEW_TOKENS, tok.eos_token_id)
    assert len(want) == NEW_TOKENS and len(tok(PROMPT).input_ids) + NEW_TOKENS > 2 * ORIGINAL - 2
    outputs = parse_outputs(setup["runs"]["inference"].result().stdout)
    assert [text for _, text in outputs] == [tok.decode(want, skip_special_tokens=True)]


def test_longrope_greedy_inference_across_the_window_equals_transformers_generate(setup):
    """Phi-3's ``generate`` uses the short factors while the text fits the window, then drops its cache and
    computes the whole text again with the long ones; inference.py does the same (one batch of both
    prompts). Teeth: one choice of factors for the whole generation (the long ones: prompt + new tokens
    exceed the window) gives other tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(setup["root"] / "tok"))
    inside, beyond = tok(PROMPT).input_ids, tok(BEYOND_PROMPT).input_ids
    assert len(inside) < ORIGINAL < len(inside) + NEW_TOKENS and len(beyond) > ORIGINAL
    want = [hf_continuation(setup["phi_model"], tok, ids, NEW_TOKENS, tok.eos_token_id)
            for ids in (inside, beyond)]
    assert len(want[0]) == NEW_TOKENS
    once = hf_continuation(_hf_model(setup["phi"], short_factor=LONG_FACTOR), tok, inside, NEW_TOKENS,
                           tok.eos_token_id)
    assert tok.decode(once, skip_special_tokens=True) != tok.decode(want[0], skip_special_tokens=True)
    outputs = parse_outputs(setup["runs"]["phi_inference"].result().stdout)
    assert [text for _, text in outputs] == [tok.decode(w, skip_special_tokens=True) for w in want]


@pytest.mark.parametrize("name", ["qwen", "phi"])
def test_hf_to_mg_to_hf_keeps_transformers_logits(setup, tmp_path, name):
    """mg->hf from a checkpoint whose source folder is gone: config.json (rope scaling, Phi-3's keys) comes
    from the record; transformers' logits on the round-tripped folder equal the original's."""
    source = setup["qwen"] if name == "qwen" else setup["phi"]
    moved = tmp_path / "hf_source"
    shutil.copytree(source, moved)
    mg = convert_hf_to_mg(moved, tmp_path / "mg", tp=2 if name == "qwen" else 1)
    shutil.rmtree(moved)
    back = convert(ConvertOptions("mg", "hf", str(mg), str(tmp_path / "back"), progress=False))
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    kind = "yarn" if name == "qwen" else "longrope"
    assert (written.get("rope_scaling") or written.get("rope_parameters"))["rope_type"] == kind
    ids = torch.tensor([(setup["yarn_ids"] * 2)[: 4 * ORIGINAL - 8]])  # beyond the window
    reference = setup["qwen_model"] if name == "qwen" else setup["phi_model"]
    with torch.no_grad():
        want = reference(ids).logits
        got = _hf_model(back)(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
