"""A Megatron-LM script with ``--position-embedding-type yarn`` (outside MLA): our patches let Megatron-LM's
parser take it (with MindSpeed-LLM's ``--rope-scaling-original-max-position-embeddings``, ``--beta-fast``,
``--beta-slow`` beside its MLA flags ``--rotary-scaling-factor``, ``--mscale``, ``--mscale-all-dim``) and give
its ``TransformerConfig`` the fields megatron-core's own ``YarnRotaryEmbedding`` reads; megatron-core's
``GPTModel(position_embedding_type="yarn")`` then gives transformers' logits for a YaRN Qwen3 beyond its
original window (fp32, 1e-5). Run on the stand-in ``megatron.training`` (tests/patches/megatron_lm_standin)
in a process of its own (forked from one with torch imported: tests.helpers.launch.run_python); the teeth:
the same model with plain RoPE is far off."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.launch import run_python
from tests.helpers.tiny import convert_hf_to_mg, make_tiny_hf_model

STANDIN = Path(__file__).parent / "megatron_lm_standin"
SEQ = 100

CODE = """
import argparse, sys, torch
import mindspeed_llm
from megatron.training import arguments
from mindspeed_llm.convert import model_config_from_args
from mindspeed_llm.runtime.checkpoint import load_rank_state
from tests.ops.megatron_env import single_process_model_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

mg, ids_path, out_path = sys.argv[1:4]
sys.argv = ["pretrain_gpt.py", "--position-embedding-type", "yarn", "--rotary-scaling-factor", "4",
            "--rope-scaling-original-max-position-embeddings", "32", "--max-position-embeddings", "128"]
flags = arguments.parse_args()
ids = torch.load(ids_path)
with single_process_model_parallel():
    state = load_rank_state(mg, None, 0, 0, 1)
    cfg = model_config_from_args(state["args"]).replace(params_dtype=torch.float32, rope_scaling=None)
    logits = {}
    for kind in ("yarn", "rope"):
        model_fields = cfg.transformer_config_kwargs()
        ns = argparse.Namespace(**{**vars(flags), **model_fields, "position_embedding_type": kind,
                                   "use_cpu_initialization": True, "perform_initialization": False})
        config = arguments.core_transformer_config_from_args(ns)
        model = GPTModel(config=config, vocab_size=state["args"].padded_vocab_size, max_sequence_length=128,
                         transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm",
                                                                         qk_layernorm=True),
                         parallel_output=False, position_embedding_type=kind, rotary_base=cfg.rotary_base)
        model.load_state_dict(state["model"], strict=True)
        model.eval()
        seq = ids.shape[1]
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)[None, None]
        with torch.no_grad():
            logits[kind] = model(ids, torch.arange(seq)[None], mask)
torch.save(logits, out_path)
"""


def test_megatron_lm_yarn_gpt_model_equals_transformers(tmp_path):
    hf = make_tiny_hf_model(str(tmp_path / "hf"), "qwen3", num_layers=2, initializer_range=0.2,
                            rope_theta=10000.0, max_position_embeddings=128,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                          "original_max_position_embeddings": 32})
    mg = convert_hf_to_mg(tmp_path / "hf", tmp_path / "mg")
    ids = torch.randint(3, 127, (1, SEQ), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        want = hf(ids).logits
    # The stand-in comes first on the path after the script's folder, as PYTHONPATH=STANDIN:REPO_ROOT puts it.
    code = f"import sys\nsys.path.insert(1, {str(STANDIN)!r})\n{CODE}"
    proc = run_python(code, tmp_path, mg, tmp_path / "ids.pt", tmp_path / "out.pt",
                      env={"MINDSPEED_LLM_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(got["yarn"][..., :128], want, rtol=0, atol=1e-5)
    assert (got["rope"][..., :128] - want).abs().max() > 1e-2  # plain RoPE: another model
