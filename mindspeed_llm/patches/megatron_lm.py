"""Megatron-LM's own training package (``megatron.training``, from a clone) on the PyPI megatron-core.

``import mindspeed_llm`` as the first line of Megatron-LM's ``pretrain_gpt.py`` (tested against
core_v0.16.1) makes it train on the CPU, CUDA or an NPU. The PyPI wheel has no ``megatron.training``,
so nothing here is applied at import: an import hook applies the group ``megatron-lm`` when
``megatron.training`` is first imported (at once if it already is). What it covers:

- **CUDA assumed**: ``initialize_megatron`` asserts ``torch.cuda.is_available()`` (passes
  ``allow_no_cuda=True`` off CUDA; the device layer stands in for CUDA); ``get_device_arch_version``
  asks ``torch.cuda.get_device_properties`` (0 off CUDA: no architecture-specific path);
  ``validate_args`` asserts ``CUDA_DEVICE_MAX_CONNECTIONS=1`` with TP > 1 (set off CUDA, where it
  means nothing).
- **Build steps**: ``compile_helpers()`` runs ``make`` in the wheel's datasets folder, which ships the
  built helper and no Makefile (skipped when ``helpers_cpp`` imports); ``megatron.legacy.fused_kernels.load``
  probes ``nvcc`` and builds no kernel in core_v0.16.1 (skipped).
- **Transformer Engine / Apex absent**: the parser defaults ``--transformer-impl local``,
  ``--no-rope-fusion``, ``--no-gradient-accumulation-fusion`` (the fused kernels they need are TE's and
  Apex's), and, without Triton, ``megatron.core``'s batch-invariant kernels module (imported by
  ``initialize.py``, Triton-only) is replaced by one whose ``enable_batch_invariant_mode`` refuses
  with a line (``--batch-invariant-mode`` needs Triton on a CUDA GPU).
- **Our flag spellings**: ``--use-fused-rmsnorm``, ``--use-fused-rotary-pos-emb``, ``--use-fused-swiglu``
  (our kernels), ``--tokenizer-type PretrainedFromHF`` with ``--tokenizer-name-or-path`` (Megatron-LM's
  ``HuggingFaceTokenizer`` with ``--tokenizer-model``).
- **Speed patches of our entry point**: after ``initialize_megatron``, the flag-driven feature patches
  (``--use-flash-attn``, ``--use-fused-*``) and, on the CPU, the allocator policy of
  :mod:`mindspeed_llm.patches.cpu_malloc`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from mindspeed_llm.patches.registry import PatchRegistry, registry

GROUP = "megatron-lm"
TRAINING_PACKAGE = "megatron.training"
BATCH_INVARIANT_MODULE = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
HF_TOKENIZER_ALIAS = "PretrainedFromHF"
OUR_FUSED_FLAGS = ("--use-fused-rmsnorm", "--use-fused-rotary-pos-emb", "--use-fused-swiglu")
logger = logging.getLogger(__name__)


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _device() -> str:
    return registry.device or "cpu"


# ---- initialisation ------------------------------------------------------------------------------------------
def _initialize_megatron(original: Callable) -> Callable:
    def initialize_megatron(*args: Any, **kwargs: Any):
        import torch

        if not torch.cuda.is_available():  # our device layer stands in for CUDA (CPU; NPU via torch_npu)
            kwargs["allow_no_cuda"] = True
        result = original(*args, **kwargs)
        _enable_speed_patches()
        return result

    initialize_megatron.__doc__ = "Megatron-LM's initialize_megatron, off CUDA too, then our speed patches."
    return initialize_megatron


def _enable_speed_patches() -> None:
    """The feature patches from Megatron-LM's parsed args, and the CPU allocator policy."""
    from megatron.training import get_args

    from mindspeed_llm.patches.features import enable_feature_patches_from_args

    args = get_args()
    features = enable_feature_patches_from_args(args, device=_device())
    notes = [f"feature patches: {', '.join(features)}"] if features else []
    if _device() == "cpu":
        from mindspeed_llm.patches import cpu_malloc

        if cpu_malloc.keep_freed_memory():
            notes.append("host memory: freed blocks kept for reuse")
    if notes and getattr(args, "rank", 0) == 0:
        print(f"> mindspeed_llm: {'; '.join(notes)}", flush=True)


def _device_arch_version(original: Callable) -> Callable:
    def get_device_arch_version() -> int:
        import torch

        return original() if torch.cuda.is_available() else 0

    get_device_arch_version.__doc__ = "GPU architecture major version; 0 when there is no CUDA GPU."
    return get_device_arch_version


def _compile_helpers(original: Callable) -> Callable:
    def compile_helpers() -> None:
        if _have("megatron.core.datasets.helpers_cpp"):
            return  # the wheel ships the built helper (and no Makefile)
        original()

    compile_helpers.__doc__ = "megatron-core's dataset helper build, skipped when the built helper is present."
    return compile_helpers


def _fused_kernels_load(args: Any) -> None:
    """No-op: Megatron-LM core_v0.16.1's ``fused_kernels.load`` only probes nvcc; it builds no kernel."""


# ---- arguments -----------------------------------------------------------------------------------------------
def _set_default(parser: argparse.ArgumentParser, dest: str, value: Any) -> None:
    for action in parser._actions:
        if action.dest == dest:
            action.default = value
    parser.set_defaults(**{dest: value})


def _add_megatron_arguments(original: Callable) -> Callable:
    def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = original(parser)
        if not _have("transformer_engine"):
            _set_default(parser, "transformer_impl", "local")
            _set_default(parser, "apply_rope_fusion", False)  # TE's fused RoPE
        if not _have("transformer_engine") and not _have("apex"):
            _set_default(parser, "gradient_accumulation_fusion", False)  # Apex/TE wgrad kernels
        for action in parser._actions:
            if action.dest == "tokenizer_type" and action.choices and HF_TOKENIZER_ALIAS not in action.choices:
                action.choices = [*action.choices, HF_TOKENIZER_ALIAS]
        group = parser.add_argument_group("mindspeed_llm")
        known = {s for a in parser._actions for s in a.option_strings}
        for flag in OUR_FUSED_FLAGS:
            if flag not in known:
                group.add_argument(flag, action="store_true", help="mindspeed_llm's fused kernel (patch layer)")
        if "--tokenizer-name-or-path" not in known:
            group.add_argument("--tokenizer-name-or-path", default=None,
                               help="MindSpeed-LLM's spelling of --tokenizer-model for --tokenizer-type "
                                    f"{HF_TOKENIZER_ALIAS} (HuggingFaceTokenizer)")
        return parser

    add_megatron_arguments.__doc__ = "Megatron-LM's parser, with TE/Apex-free defaults and our flag spellings."
    return add_megatron_arguments


def translate_our_spellings(args: argparse.Namespace) -> None:
    """MindSpeed-LLM's tokenizer spelling -> Megatron-LM's (``HuggingFaceTokenizer`` + ``--tokenizer-model``)."""
    if getattr(args, "tokenizer_type", None) == HF_TOKENIZER_ALIAS:
        args.tokenizer_type = "HuggingFaceTokenizer"
    name = getattr(args, "tokenizer_name_or_path", None)
    if name and not getattr(args, "tokenizer_model", None):
        args.tokenizer_model = name


def _validate_args(original: Callable) -> Callable:
    def validate_args(args: argparse.Namespace, *rest: Any, **kwargs: Any):
        import torch

        translate_our_spellings(args)
        if not torch.cuda.is_available():
            # Megatron-LM asserts this CUDA hardware-queue setting with TP > 1; without CUDA it means nothing.
            os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        return original(args, *rest, **kwargs)

    validate_args.__doc__ = "Megatron-LM's validate_args after translating our flag spellings."
    return validate_args


# ---- Triton-only module ----------------------------------------------------------------------------------------
def _batch_invariant_module(name: str) -> types.ModuleType:
    """Stands in for megatron-core's Triton batch-invariant kernels where Triton is not installed."""
    module = types.ModuleType(name, "Batch-invariant mode needs Triton: not installed here (mindspeed_llm).")

    def enable_batch_invariant_mode() -> None:
        raise RuntimeError("--batch-invariant-mode needs Triton's kernels on a CUDA GPU, and triton is not "
                           "installed: pip install triton, or drop --batch-invariant-mode")

    def set_batch_invariant_mode(enabled: bool = True):
        import contextlib

        if enabled:
            enable_batch_invariant_mode()
        return contextlib.nullcontext()

    module.enable_batch_invariant_mode = enable_batch_invariant_mode
    module.set_batch_invariant_mode = set_batch_invariant_mode
    module.disable_batch_invariant_mode = lambda: None
    module.is_batch_invariant_mode_enabled = lambda: False
    module.__all__ = ["set_batch_invariant_mode", "is_batch_invariant_mode_enabled",
                      "disable_batch_invariant_mode", "enable_batch_invariant_mode"]
    return module


class _ModuleLoader(importlib.abc.Loader):
    def __init__(self, factory: Callable[[str], types.ModuleType]):
        self.factory = factory

    def create_module(self, spec):
        return self.factory(spec.name)

    def exec_module(self, module) -> None:
        pass


class _ThenApply(importlib.abc.Loader):
    """Runs the real loader of ``megatron.training``, then applies this group's patches."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        apply_megatron_lm_patches()


class _ImportHook(importlib.abc.MetaPathFinder):
    """Applies the group when ``megatron.training`` is imported; supplies the Triton-free module."""

    def find_spec(self, name: str, path=None, target=None):
        if name == BATCH_INVARIANT_MODULE and not _have("triton"):
            return importlib.machinery.ModuleSpec(name, _ModuleLoader(_batch_invariant_module))
        if name == TRAINING_PACKAGE:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenApply(spec.loader)
            return spec
        return None


_HOOK = _ImportHook()


def register_megatron_lm_patches(reg: PatchRegistry) -> None:
    """Register (not apply) the patches on Megatron-LM's training package (needs it importable)."""
    r = functools.partial(reg.register, group=GROUP)
    r("megatron.training.initialize.initialize_megatron", wrapper=_initialize_megatron,
      description="allow_no_cuda off CUDA; our speed patches after initialisation")
    r("megatron.training.arguments.add_megatron_arguments", wrapper=_add_megatron_arguments,
      description="TE/Apex-free defaults; --use-fused-*, PretrainedFromHF")
    r("megatron.training.arguments.validate_args", wrapper=_validate_args, description="our spellings")
    r("megatron.training.utils.get_device_arch_version", wrapper=_device_arch_version,
      description="0 without a CUDA GPU")
    r("megatron.core.datasets.utils.compile_helpers", wrapper=_compile_helpers,
      description="no make when the built helper ships")
    r("megatron.legacy.fused_kernels.load", _fused_kernels_load, description="no nvcc probe")


def apply_megatron_lm_patches(reg: PatchRegistry = registry) -> bool:
    """Apply the group now if Megatron-LM's training package is importable; True when applied."""
    if not _have(TRAINING_PACKAGE):
        return False
    if not reg.patches(GROUP):
        register_megatron_lm_patches(reg)
    reg.apply(GROUP)
    return True


def install_import_hook() -> None:
    """Apply the group when ``megatron.training`` is imported (now, if it already is)."""
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    if TRAINING_PACKAGE in sys.modules:
        apply_megatron_lm_patches()
