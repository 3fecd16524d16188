"""Megatron-LM's parser defaults that cannot run on this device (or run slower), and what each falls back to.

Megatron-LM core_v0.16.1 turns on, by default, kernels that exist only with Transformer Engine, Apex's
CUDA extensions or a working ``torch.compile`` backend. Run as it ships on a machine without them, its
``pretrain_gpt.py`` dies at the first use (bf16 with ``--masked-softmax-fusion`` imports
``scaled_masked_softmax_cuda`` in the first forward pass). :func:`fallbacks` says, per device, which of
those defaults cannot run and the setting that can; :mod:`mindspeed_llm.patches.megatron_lm` makes them
the parser's defaults (a flag the user passes still wins) and announces them once, on rank 0, after
``initialize_megatron``.

- ``--transformer-impl transformer_engine`` and RoPE fusion need Transformer Engine (not on the CPU);
  else ``--transformer-impl local``, ``--no-rope-fusion``.
- Gradient-accumulation fusion needs TE or Apex's ``fused_weight_gradient_mlp_cuda`` (not on the CPU).
- Masked-softmax fusion needs CUDA and the ``scaled_*masked_softmax_cuda`` kernels (Apex / Megatron's
  fused kernels); NPUs and the CPU have none.
- Bias-GeLU and bias-dropout fusion are ``torch.compile``'d: a C++ compiler on the CPU, Triton on CUDA
  and NPUs. Bias-SwiGLU the same, except on the CPU, where the ``ops-cpu`` patches run its kernels in
  eager torch (so it always runs there).
- On the CPU bias-dropout fusion is off even with a compiler: the compiled kernel runs, but slower than
  eager torch (``python bench/bench_bias_dropout.py``: megatron-core's ``bias_dropout_add_fused_train``
  against ``bias_dropout_add_unfused``, one thread, dropout 0.1, forward and backward, 1.3-3.1x the time
  from [2048, 1, 4096] down to [128, 2, 128]), and our ``pretrain_gpt.py`` never fuses it, so the drop-in
  keeps our entry point's speed.

``--cross-entropy-loss-fusion`` is off by default in Megatron-LM and ``--persist-layer-norm`` is read only
by Apex's fused LayerNorm (never built without Apex), so neither needs a fallback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SOFTMAX_KERNELS = (
    "scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda", "scaled_softmax_cuda",
)
WGRAD_KERNEL = "fused_weight_gradient_mlp_cuda"
SLOWER_ON_CPU = ("torch.compile's CPU kernel runs slower than eager torch: 1.3-3.1x a call, and about 2 s of "
                 "compilation a process; our pretrain_gpt.py runs it eager too")


@dataclass(frozen=True)
class Fallback:
    """One Megatron-LM default replaced: the parsed name, its new value, the flag a user would pass, why."""

    dest: str
    value: Any
    flag: str
    reason: str


def have_module(module: str) -> bool:
    """Whether ``module`` is installed (its parent packages are imported to look; their errors propagate)."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError as err:  # a parent package is not installed: neither is the module
        if err.name and module.startswith(err.name + "."):
            return False
        raise


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would call ($CXX, else g++, c++, clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def fallbacks(device: str, have: Callable[[str], bool] = have_module,
              compiler: Callable[[], str | None] = cpp_compiler) -> list[Fallback]:
    """Megatron-LM's defaults that cannot run on ``device`` ("cpu", "cuda", "npu"), or run slower there, with
    what can."""
    te = device != "cpu" and have("transformer_engine")
    wgrad = device != "cpu" and have(WGRAD_KERNEL)
    softmax = device == "cuda" and all(have(m) for m in SOFTMAX_KERNELS)
    if device == "cpu":
        compiles = compiler() is not None
        why_not_compiled = "torch.compile finds no C++ compiler: install g++ or set CXX"
    else:
        compiles = have("triton")
        why_not_compiled = f"torch.compile on {device} needs Triton: not installed"
    te_state = "CUDA only" if device == "cpu" else "not installed"
    out = []
    if not te:
        out.append(Fallback("transformer_impl", "local", "--transformer-impl local",
                            f"Transformer Engine: {te_state}"))
        out.append(Fallback("apply_rope_fusion", False, "--no-rope-fusion",
                            f"its fused RoPE is Transformer Engine's: {te_state}"))
    if not te and not wgrad:
        out.append(Fallback("gradient_accumulation_fusion", False, "--no-gradient-accumulation-fusion",
                            f"its kernels are Transformer Engine's or Apex's {WGRAD_KERNEL}: "
                            + ("CUDA only" if device == "cpu" else "neither installed")))
    if not softmax:
        out.append(Fallback("masked_softmax_fusion", False, "--no-masked-softmax-fusion",
                            "its kernels are Apex's / Megatron's scaled_masked_softmax_cuda: "
                            + ("CUDA only" if device != "cuda" else "not installed")))
    if not compiles:
        out.append(Fallback("bias_gelu_fusion", False, "--no-bias-gelu-fusion", why_not_compiled))
        out.append(Fallback("bias_dropout_fusion", False, "--no-bias-dropout-fusion", why_not_compiled))
        if device != "cpu":  # on the CPU the ops-cpu patches run megatron's fused SwiGLU in eager torch
            out.append(Fallback("bias_swiglu_fusion", False, "--no-bias-swiglu-fusion", why_not_compiled))
    elif device == "cpu":
        out.append(Fallback("bias_dropout_fusion", False, "--no-bias-dropout-fusion", SLOWER_ON_CPU))
    return out


def announcement(device: str, applied: list[Fallback]) -> str | None:
    """The one line that says which defaults fell back (None when none did)."""
    if not applied:
        return None
    parts = "; ".join(f"{f.flag} ({f.reason})" for f in applied)
    return f"Megatron-LM defaults replaced on {device} (they cannot run there, or run slower): {parts}"
