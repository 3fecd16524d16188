"""The patches for Megatron-LM's own training package, without a Megatron-LM clone.

Tests may not depend on a clone, so the import hook is exercised on a stand-in ``megatron.training``
written here (``tests/patches/megatron_lm_standin``: the four functions the patches target, with
Megatron-LM core_v0.16.1's names and the behaviour that stops it off CUDA). The real check against a
clone is ``bench/megatron_lm_dropin.py``. Everything else runs against the installed megatron-core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mindspeed_llm  # noqa: F401  (installs the import hook)
from mindspeed_llm.patches import megatron_lm
from tests.conftest import REPO_ROOT
from tests.skip_policy import skip_for_hardware

STANDIN = Path(__file__).parent / "megatron_lm_standin"


def test_batch_invariant_module_without_triton_refuses_with_one_line():
    """Without Triton the stand-in module answers; with Triton, megatron-core's own module is imported."""
    from megatron.core.transformer.custom_layers import batch_invariant_kernels as bik

    if megatron_lm._have("triton"):
        assert bik.__file__ and bik.__file__.endswith("batch_invariant_kernels.py")
        return

    assert not bik.is_batch_invariant_mode_enabled()
    bik.disable_batch_invariant_mode()
    with bik.set_batch_invariant_mode(False):
        pass
    with pytest.raises(RuntimeError, match="--batch-invariant-mode needs Triton") as err:
        bik.enable_batch_invariant_mode()
    assert "\n" not in str(err.value)


def _megatron_like_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of Megatron-LM core_v0.16.1's parser that the wrapper changes (same dests/defaults)."""
    parser.add_argument("--transformer-impl", default="transformer_engine",
                        choices=["local", "transformer_engine"])
    parser.add_argument("--no-rope-fusion", action="store_false", dest="apply_rope_fusion")
    parser.add_argument("--no-gradient-accumulation-fusion", action="store_false",
                        dest="gradient_accumulation_fusion")
    for name in ("masked-softmax", "bias-gelu", "bias-swiglu", "bias-dropout"):
        dest = f"{name.replace('-', '_')}_fusion"
        parser.add_argument(f"--no-{name}-fusion", action="store_false", dest=dest)
    parser.add_argument("--tokenizer-type", choices=["HuggingFaceTokenizer", "NullTokenizer"])
    parser.add_argument("--tokenizer-model", default=None)
    parser.add_argument("--use-flash-attn", action="store_true")
    return parser


FUSIONS = ("apply_rope_fusion", "gradient_accumulation_fusion", "masked_softmax_fusion", "bias_gelu_fusion",
           "bias_swiglu_fusion", "bias_dropout_fusion")


def _parsed_defaults(device: str, monkeypatch) -> argparse.Namespace:
    monkeypatch.setattr(megatron_lm, "_device", lambda: device)
    parser = megatron_lm._add_megatron_arguments(_megatron_like_parser)(argparse.ArgumentParser())
    return parser.parse_args([])


def test_parser_defaults_on_the_cpu_are_what_runs_there(monkeypatch):
    """On the CPU: no Transformer Engine layers and no CUDA kernels; bias-GeLU fusion runs with a C++
    compiler (this machine has one), bias-SwiGLU always (its eager CPU kernels), bias-dropout fusion never
    (compiled, it is slower than eager there)."""
    args = _parsed_defaults("cpu", monkeypatch)
    assert args.transformer_impl == "local"
    assert not (args.apply_rope_fusion or args.gradient_accumulation_fusion or args.masked_softmax_fusion)
    assert args.bias_swiglu_fusion
    compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    assert args.bias_gelu_fusion == compiler
    assert not args.bias_dropout_fusion
    # A flag the user passes still wins over a fallback default.
    parser = megatron_lm._add_megatron_arguments(_megatron_like_parser)(argparse.ArgumentParser())
    chosen = parser.parse_args(["--transformer-impl", "transformer_engine"])
    assert chosen.transformer_impl == "transformer_engine"


def test_parser_defaults_on_an_npu_and_on_cuda_without_te_or_apex(monkeypatch):
    """Nothing of TE, Apex's kernels or Triton is installed here: on an NPU (the device the torch_npu
    stand-in selects) and on CUDA every one of Megatron-LM's fused defaults falls back."""
    if any(megatron_lm._have(m) for m in ("transformer_engine", "triton", "fused_weight_gradient_mlp_cuda")):
        skip_for_hardware("TE, Triton or Apex's kernels are installed: this checks a machine without them")
    for device in ("npu", "cuda"):
        args = _parsed_defaults(device, monkeypatch)
        assert args.transformer_impl == "local"
        assert not any(getattr(args, name) for name in FUSIONS), (device, vars(args))


@pytest.mark.parametrize("device,installed,compiler,expected", [
    ("cpu", set(), "g++", {"transformer_impl", "apply_rope_fusion", "gradient_accumulation_fusion",
                           "masked_softmax_fusion", "bias_dropout_fusion"}),
    ("cpu", {"everything"}, "g++", {"transformer_impl", "apply_rope_fusion", "gradient_accumulation_fusion",
                                    "masked_softmax_fusion", "bias_dropout_fusion"}),
    ("cpu", set(), None, {"transformer_impl", "apply_rope_fusion", "gradient_accumulation_fusion",
                          "masked_softmax_fusion", "bias_gelu_fusion", "bias_dropout_fusion"}),
    ("cuda", set(), "g++", {"transformer_impl", *FUSIONS}),
    ("cuda", {"triton"}, None, {"transformer_impl", "apply_rope_fusion", "gradient_accumulation_fusion",
                                "masked_softmax_fusion"}),
    ("cuda", {"triton", "fused_weight_gradient_mlp_cuda", "scaled_masked_softmax_cuda",
              "scaled_upper_triang_masked_softmax_cuda", "scaled_softmax_cuda"}, None,
     {"transformer_impl", "apply_rope_fusion"}),
    ("cuda", {"everything"}, None, set()),
    ("npu", {"everything"}, None, {"masked_softmax_fusion"}),
    ("npu", set(), None, {"transformer_impl", *FUSIONS}),
])
def test_fallback_table(device, installed, compiler, expected):
    """Which defaults fall back, per device and installed kernels (written out by hand)."""
    from mindspeed_llm.patches.megatron_lm_defaults import fallbacks

    found = fallbacks(device, have=lambda m: "everything" in installed or m in installed,
                      compiler=lambda: compiler)
    assert {f.dest for f in found} == expected
    assert all(f.flag.startswith("--") and f.reason for f in found)


def test_parser_wrapper_accepts_our_spellings():
    add = megatron_lm._add_megatron_arguments(_megatron_like_parser)
    parser = add(argparse.ArgumentParser())
    args = parser.parse_args(["--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", "/m",
                              "--use-fused-rmsnorm", "--use-fused-swiglu", "--use-fused-rotary-pos-emb"])
    megatron_lm.translate_our_spellings(args)
    assert (args.tokenizer_type, args.tokenizer_model) == ("HuggingFaceTokenizer", "/m")
    assert args.use_fused_rmsnorm and args.use_fused_swiglu and args.use_fused_rotary_pos_emb
    # Megatron-LM's own flags are untouched: --transformer-impl transformer_engine still parses.
    te_args = parser.parse_args(["--transformer-impl", "transformer_engine"])
    assert te_args.transformer_impl == "transformer_engine"


def test_compile_helpers_is_skipped_when_the_wheel_ships_the_built_helper():
    assert megatron_lm._have("megatron.core.datasets.helpers_cpp")

    def make_in_wheel():
        raise AssertionError("would run make")

    megatron_lm._compile_helpers(make_in_wheel)()  # no make


def test_import_hook_patches_megatron_training_when_it_is_imported(tmp_path):
    """With the stand-in on PYTHONPATH: initialize_megatron runs off CUDA and turns on our feature patches."""
    code = (
        "import mindspeed_llm, sys\n"
        "from mindspeed_llm.patches import megatron_lm\n"
        "assert not mindspeed_llm.registry.patches(megatron_lm.GROUP)\n"
        "import megatron.training\n"
        "from megatron.training import initialize_megatron, get_args\n"
        "sys.argv = ['pretrain_gpt.py', '--use-fused-rmsnorm']\n"
        "initialize_megatron()\n"
        "print('ARGS', get_args().use_fused_rmsnorm)\n"
        "from megatron.training.utils import get_device_arch_version\n"
        "from megatron.legacy import fused_kernels\n"
        "fused_kernels.load(get_args())\n"
        "print('ARCH', get_device_arch_version())\n"
        "print(mindspeed_llm.describe())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{STANDIN}{os.pathsep}{REPO_ROOT}", "MINDSPEED_LLM_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ARGS True" in proc.stdout and "ARCH 0" in proc.stdout
    assert "> mindspeed_llm: feature patches: " in proc.stdout and "rmsnorm" in proc.stdout
    # The defaults replaced on the CPU are said once: masked-softmax fusion among them.
    announced = [line for line in proc.stdout.splitlines()
                 if "Megatron-LM defaults replaced on cpu (they cannot run there, or run slower): " in line]
    assert len(announced) == 1 and "--no-masked-softmax-fusion" in announced[0], proc.stdout
    assert "--transformer-impl local" in announced[0]
    assert "[megatron-lm] wraps megatron.training.initialize.initialize_megatron" in proc.stdout
