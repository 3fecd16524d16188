"""YaRN and LongRoPE: our frequencies and attention factor against transformers' own
``ROPE_INIT_FUNCTIONS`` (``_compute_yarn_parameters``, ``_compute_longrope_parameters``) on the configs
transformers builds from the same config.json; the attention factor reaching megatron's attention; the
MindSpeed-LLM flags building, completing and contradicting a recorded scaling."""

from __future__ import annotations

import pytest
import torch

from mindspeed_llm.config.flags import ArgumentError, parse_args
from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.validate import validate_args
from mindspeed_llm.models.families import ModelConfig, UnsupportedModelError
from tests.helpers.tiny import tiny_hf_config

YARN_CASES = {
    "qwen_128k": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "mscale_pair": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64,
                    "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2},
    "mscale_alone_is_ignored": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                                "mscale": 3.0},
    "explicit_factor_untruncated": {"rope_type": "yarn", "factor": 2.5,
                                    "original_max_position_embeddings": 48, "attention_factor": 0.9,
                                    "truncate": False},
    "factor_from_windows": {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 64},
}


def _hf(config_dict: dict):
    from transformers import AutoConfig

    d = dict(config_dict)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k != "transformers_version"})


@pytest.mark.parametrize("case", list(YARN_CASES))
def test_yarn_equals_transformers(case):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = tiny_hf_config("qwen3", rope_theta=10000.0, rope_scaling=dict(YARN_CASES[case]))
    ours = ModelConfig.from_hf_config(raw)
    want_inv, want_factor = ROPE_INIT_FUNCTIONS["yarn"](_hf(raw))
    emb = type("Emb", (), {"inv_freq": torch.zeros(1)})()
    got_inv = ours.rope_table(emb).inv_freq
    torch.testing.assert_close(got_inv, want_inv, rtol=0, atol=0)
    assert ours.rope_attention_factor() == pytest.approx(want_factor, rel=1e-15)
    megatron_config = ours.to_transformer_config(use_cpu_initialization=True)
    assert megatron_config.rope_attention_factor == ours.rope_attention_factor()


@pytest.mark.parametrize("attention_factor", [None, 1.25])
def test_longrope_equals_transformers_on_both_sides(attention_factor):
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
               "long_factor": [1.0 + 2.0 * i for i in range(8)]}
    if attention_factor is not None:
        scaling["attention_factor"] = attention_factor
    raw = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 512,
           "original_max_position_embeddings": 64,
           "rope_scaling": scaling}
    ours = ModelConfig.from_hf_config(raw)
    hf = Phi3Config(**{k: v for k, v in raw.items() if k != "model_type"})
    short, factor = ROPE_INIT_FUNCTIONS["longrope"](hf, seq_len=64)
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](hf, seq_len=65)
    assert not torch.equal(short, long)
    from mindspeed_llm.models.rope_scaling import longrope_inv_freq

    for is_long, want in ((False, short), (True, long)):
        got = longrope_inv_freq(ours.rope_scaling, 16, 10000.0, long=is_long)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert ours.rope_attention_factor() == pytest.approx(factor, rel=1e-15)
    assert ours.rope_scaling["original_max_position_embeddings"] == 64  # Phi-3's top-level key


def test_longrope_table_switches_beyond_the_original_window():
    """The megatron RotaryEmbedding the builder installs: short frequencies for up to 64 positions."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    import mindspeed_llm  # noqa: F401 - the CPU device layer
    from mindspeed_llm.models.rope_scaling import longrope_inv_freq, make_longrope_embedding

    scaling = {"rope_type": "longrope", "original_max_position_embeddings": 64,
               "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}
    emb = make_longrope_embedding(RotaryEmbedding(16, 1.0, use_cpu_initialization=True), scaling, 16, 10000.0)
    for length, long in ((64, False), (65, True)):
        want = torch.outer(torch.arange(length).float(), longrope_inv_freq(scaling, 16, 10000.0, long))
        torch.testing.assert_close(emb(length)[:, 0, 0, :8], want, rtol=0, atol=0)


def test_megatron_attention_reads_the_attention_factor():
    from megatron.core.transformer import attention

    import mindspeed_llm  # noqa: F401 - the base patches

    cfg = ModelConfig.from_hf_config(tiny_hf_config("qwen3", rope_scaling=dict(YARN_CASES["qwen_128k"])))
    plain = ModelConfig.from_hf_config(tiny_hf_config("qwen3"))
    factor = attention._yarn_get_concentration_factor_from_config
    yarn_config = cfg.to_transformer_config(use_cpu_initialization=True)
    assert factor(yarn_config) == cfg.rope_attention_factor() > 1.1
    assert factor(plain.to_transformer_config(use_cpu_initialization=True)) == 1.0


def test_dynamic_ntk_stays_refused():
    with pytest.raises(UnsupportedModelError, match="dynamic NTK rescales the frequencies"):
        ModelConfig.from_hf_config(tiny_hf_config("qwen3", rope_scaling={"rope_type": "dynamic",
                                                                          "factor": 2.0}))


BASE = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --kv-channels 16 --seq-length 32 "
        "--train-iters 5 --lr 1e-3 --swiglu --disable-bias-linear --tokenizer-type NullTokenizer "
        "--vocab-size 100 --data-path d_text_document --max-position-embeddings 512")


def _scaling(extra: str, recorded: dict | None = None):
    config = RunConfig.from_args(validate_args(parse_args((BASE + " " + extra).split()), 1))
    if recorded is None:  # a launch from scratch: the model config the flags make
        return config.model.model_config(128, torch.float32).rope_scaling
    return config.model.rope_scaling(recorded)


def test_mindspeed_flags_build_the_scalings():
    assert _scaling("--rope-scaling-type yarn --rope-scaling-factor 4 "
                    "--rope-scaling-original-max-position-embeddings 32768 --beta-fast 32 --beta-slow 1 "
                    "--rope-scaling-mscale 1 --rope-scaling-mscale-all-dim 0") == {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}  # defaults dropped
    deepseek = ("--rope-scaling-type yarn --rope-scaling-factor 40 --rope-scaling-original-max-position-"
                "embeddings 4096 --beta-fast 16 --rope-scaling-mscale 1 --rope-scaling-mscale-all-dim 1")
    assert _scaling(deepseek) == {
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 16.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
    factors = ",".join(["1.5"] * 8)
    assert _scaling(f"--rope-scaling-type longrope --rope-scaling-original-max-position-embeddings 64 "
                    f"--long-factor {factors} --short-factor {factors}") == {
        "rope_type": "longrope", "original_max_position_embeddings": 64, "long_factor": [1.5] * 8,
        "short_factor": [1.5] * 8}


def test_flags_complete_or_contradict_the_recorded_scaling():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    mindspeed_defaults = ("--beta-fast 32 --beta-slow 1 --rope-scaling-mscale 1 "
                          "--rope-scaling-mscale-all-dim 0")
    assert _scaling(f"--rope-scaling-type yarn --rope-scaling-factor 4 {mindspeed_defaults}", yarn) == yarn
    with pytest.raises(ArgumentError, match="records"):  # not transformers' default: another model
        _scaling("--rope-scaling-type yarn --rope-scaling-factor 4 --beta-fast 16", yarn)
    recorded = {"rope_type": "longrope", "original_max_position_embeddings": 64, "long_factor": [2.0] * 8,
                "short_factor": [1.0] * 8}
    assert _scaling("--rope-scaling-type longrope", recorded) == recorded
    assert _scaling("", recorded) == recorded
    with pytest.raises(ArgumentError, match="records"):
        _scaling("--rope-scaling-type longrope --long-factor " + ",".join(["3"] * 8), recorded)
    with pytest.raises(ArgumentError, match="records"):
        _scaling("--rope-scaling-type yarn --rope-scaling-factor 4", recorded)


@pytest.mark.parametrize("extra,needle", [
    ("--beta-fast 16", "--beta-fast needs --rope-scaling-type yarn or longrope"),
    ("--rope-scaling-type longrope --rope-scaling-original-max-position-embeddings 64 --beta-fast 16",
     "--beta-fast does not apply to --rope-scaling-type longrope"),
    ("--rope-scaling-type yarn --rope-scaling-factor 4", "needs original_max_position_embeddings"),
    ("--rope-scaling-type longrope --rope-scaling-original-max-position-embeddings 64 --short-factor 1,2",
     "short_factor must be a list of 8 numbers"),
])
def test_wrong_flags_are_one_line(extra, needle):
    with pytest.raises(ArgumentError, match=needle):
        _scaling(extra)
