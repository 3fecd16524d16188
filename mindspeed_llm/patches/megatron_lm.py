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
- **Defaults that cannot run here**: Megatron-LM's defaults that need Transformer Engine, Apex's CUDA
  kernels or a ``torch.compile`` backend (``--transformer-impl transformer_engine``, the masked-softmax,
  RoPE, gradient-accumulation, bias-GeLU/SwiGLU/dropout fusions) become, per device, what runs
  (:mod:`mindspeed_llm.patches.megatron_lm_defaults`), announced once on rank 0; and, without Triton,
  ``megatron.core``'s batch-invariant kernels module (imported by ``initialize.py``, Triton-only) is
  served by :mod:`mindspeed_llm.patches.batch_invariant_without_triton`, whose
  ``enable_batch_invariant_mode`` refuses with a line (``--batch-invariant-mode`` needs Triton on a CUDA GPU).
- **Our flag spellings**: ``--use-fused-rmsnorm``, ``--use-fused-rotary-pos-emb``, ``--use-fused-swiglu``
  (our kernels), ``--tokenizer-type PretrainedFromHF`` with ``--tokenizer-name-or-path`` (Megatron-LM's
  ``HuggingFaceTokenizer`` with ``--tokenizer-model``).
- **Speed patches of our entry point**: after ``initialize_megatron``, the flag-driven feature patches
  (``--use-flash-attn``, ``--use-fused-*``) and, on the CPU, the allocator policy of
  :mod:`mindspeed_llm.patches.cpu_malloc`.

Both import hooks (the one on ``megatron.training`` and the batch-invariant stand-in) are registered
patches of group ``import-hooks`` (:class:`~mindspeed_llm.patches.registry.ImportHook`), applied with the
base patches, listed by ``describe()`` and removed by ``revert``. The signatures recorded for Megatron-LM's
functions are core_v0.16.1's; they are checked when the group applies, against the clone on the path.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mindspeed_llm.patches.megatron_lm_defaults import announcement, fallbacks, have_module
from mindspeed_llm.patches.registry import PatchRegistry, registry

GROUP = "megatron-lm"
HOOK_GROUP = "import-hooks"
TRAINING_PACKAGE = "megatron.training"
BATCH_INVARIANT_MODULE = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
HF_TOKENIZER_ALIAS = "PretrainedFromHF"
OUR_FUSED_FLAGS = ("--use-fused-rmsnorm", "--use-fused-rotary-pos-emb", "--use-fused-swiglu")
logger = logging.getLogger(__name__)


def _have(module: str) -> bool:
    """Whether ``module`` is installed (its parent packages are imported to look; their errors propagate)."""
    return have_module(module)


def _device() -> str:
    return registry.device or "cpu"


# ---- initialisation -------------------------------------------------------------------------------------
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
    replaced = [f for f in fallbacks(_device()) if getattr(args, f.dest, None) == f.value]
    line = announcement(_device(), replaced)
    if line and getattr(args, "rank", 0) == 0:
        print(f"> mindspeed_llm: {line}", flush=True)
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

    compile_helpers.__doc__ = "megatron-core's dataset helper build, skipped when the built one is present."
    return compile_helpers


def _fused_kernels_load(args: Any) -> None:
    """No-op: Megatron-LM core_v0.16.1's ``fused_kernels.load`` only probes nvcc; it builds no kernel."""


# ---- arguments ------------------------------------------------------------------------------------------
def _add_megatron_arguments(original: Callable) -> Callable:
    def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = original(parser)
        # The parser is this call's own object (megatron builds a new one per parse): what is changed
        # here is part of this registered wrapper's result and nothing of it outlives the parser.
        dests = {action.dest for action in parser._actions}
        parser.set_defaults(**{f.dest: f.value for f in fallbacks(_device()) if f.dest in dests})
        for action in parser._actions:  # argparse has no public way to widen a flag's choices
            widen = action.dest == "tokenizer_type" and action.choices
            if widen and HF_TOKENIZER_ALIAS not in action.choices:
                action.choices = [*action.choices, HF_TOKENIZER_ALIAS]
            # megatron-core's GPTModel has a YaRN embedding; Megatron-LM's parser offers it only to MLA
            if action.dest == "position_embedding_type" and action.choices and "yarn" not in action.choices:
                action.choices = [*action.choices, "yarn"]
        group = parser.add_argument_group("mindspeed_llm")
        known = {s for a in parser._actions for s in a.option_strings}
        for flag in OUR_FUSED_FLAGS:
            if flag not in known:
                group.add_argument(flag, action="store_true",
                                   help="mindspeed_llm's fused kernel (patch layer)")
        for flag, kind, text in YARN_FLAGS:
            if flag not in known:
                group.add_argument(flag, type=kind, default=None, help=text)
        if "--tokenizer-name-or-path" not in known:
            group.add_argument("--tokenizer-name-or-path", default=None,
                               help="MindSpeed-LLM's spelling of --tokenizer-model for --tokenizer-type "
                                    f"{HF_TOKENIZER_ALIAS} (HuggingFaceTokenizer)")
        return parser

    add_megatron_arguments.__doc__ = "Megatron-LM's parser, defaults that run on this device, our spellings."
    return add_megatron_arguments


# --position-embedding-type yarn: Megatron-LM's MLA flags give the factor and mscales
# (--rotary-scaling-factor, --mscale, --mscale-all-dim); MindSpeed-LLM's spellings give the rest.
YARN_FLAGS = (
    ("--rope-scaling-original-max-position-embeddings", int,
     "yarn: the pretrained window (default: --max-position-embeddings)"),
    ("--beta-fast", float, "yarn: beta_fast (default 32)"),
    ("--beta-slow", float, "yarn: beta_slow (default 1)"),
)


def _core_transformer_config(original: Callable) -> Callable:
    def core_transformer_config_from_args(args: argparse.Namespace, config_class=None):
        config = original(args, config_class)
        if getattr(args, "position_embedding_type", None) == "yarn" and not getattr(
                args, "multi_latent_attention", False):
            from mindspeed_llm.models.rope_scaling import megatron_yarn_fields

            fields = megatron_yarn_fields(
                getattr(args, "rotary_scaling_factor", 1.0),
                getattr(args, "rope_scaling_original_max_position_embeddings", None)
                or args.max_position_embeddings,
                getattr(args, "beta_fast", None), getattr(args, "beta_slow", None),
                getattr(args, "mscale", None), getattr(args, "mscale_all_dim", None))
            for name, value in fields.items():  # the attributes megatron's YaRN reads off an MLA config
                setattr(config, name, value)
        return config

    core_transformer_config_from_args.__doc__ = ("Megatron-LM's TransformerConfig, with the YaRN fields "
                                                 "GPTModel reads for --position-embedding-type yarn.")
    return core_transformer_config_from_args


def translate_our_spellings(args: argparse.Namespace) -> None:
    """MindSpeed-LLM's tokenizer spelling -> Megatron-LM's (HuggingFaceTokenizer, ``--tokenizer-model``)."""
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


# ---- import hooks ---------------------------------------------------------------------------------------
BATCH_INVARIANT_STAND_IN = str(Path(__file__).with_name("batch_invariant_without_triton.py"))


def register_import_hooks(reg: PatchRegistry) -> None:
    """Register (not apply) the two import hooks of group ``import-hooks``."""
    reg.register_import_hook(
        TRAINING_PACKAGE, group=HOOK_GROUP, then=lambda module: apply_megatron_lm_patches(),
        description=f"applies group {GROUP!r} when Megatron-LM's training package (a clone) is imported")
    reg.register_import_hook(
        BATCH_INVARIANT_MODULE, group=HOOK_GROUP, stand_in=BATCH_INVARIANT_STAND_IN,
        stand_in_when=lambda: not _have("triton"),
        description="without Triton (its kernels need it): a module whose enable_batch_invariant_mode "
                    "refuses --batch-invariant-mode with one line, so Megatron-LM's initialize.py imports")


def register_megatron_lm_patches(reg: PatchRegistry) -> None:
    """Register (not apply) the patches on Megatron-LM's training package (needs it importable).

    Signatures are Megatron-LM core_v0.16.1's (and megatron-core 0.16.1's ``compile_helpers``).
    """
    r = functools.partial(reg.register, group=GROUP)
    r("megatron.training.initialize.initialize_megatron", wrapper=_initialize_megatron,
      description="allow_no_cuda=True off CUDA (our device layer stands in); our speed patches after it",
      signature="(extra_args_provider=None, args_defaults={}, ignore_unknown_args=False, "
                "allow_no_cuda=False, skip_mpu_initialization=False, get_embedding_ranks=None, "
                "get_position_embedding_ranks=None, parsed_args=None, store=None)")
    r("megatron.training.arguments.add_megatron_arguments", wrapper=_add_megatron_arguments,
      description="defaults that run on this device where Megatron-LM's need TE, Apex kernels or "
                  "torch.compile (--transformer-impl local; no masked-softmax, RoPE, wgrad, bias-gelu/"
                  "swiglu/dropout fusion: megatron_lm_defaults.py); --use-fused-*, --tokenizer-type "
                  "PretrainedFromHF, --tokenizer-name-or-path",
      signature="(parser)")
    r("megatron.training.arguments.core_transformer_config_from_args", wrapper=_core_transformer_config,
      description="--position-embedding-type yarn outside MLA: the yarn_* fields megatron-core's YaRN "
                  "embedding reads (transformers' meaning, with its attention factor)",
      signature="(args, config_class=None)")
    r("megatron.training.arguments.validate_args", wrapper=_validate_args,
      description="our flag spellings translated to Megatron-LM's; CUDA_DEVICE_MAX_CONNECTIONS set off CUDA",
      signature="(args, defaults={})")
    r("megatron.training.utils.get_device_arch_version", wrapper=_device_arch_version,
      description="0 without a CUDA GPU (it asks torch.cuda for the GPU's properties)", signature="()")
    r("megatron.core.datasets.utils.compile_helpers", wrapper=_compile_helpers,
      description="no make when the wheel ships the built helper (and no Makefile)", signature="()")
    r("megatron.legacy.fused_kernels.load", _fused_kernels_load,
      description="no nvcc probe: core_v0.16.1's load builds no kernel", signature="(args)")


def apply_megatron_lm_patches(reg: PatchRegistry = registry) -> bool:
    """Apply the group now if Megatron-LM's training package is importable; True when applied."""
    if not _have(TRAINING_PACKAGE):
        return False
    if not reg.patches(GROUP):
        register_megatron_lm_patches(reg)
    reg.apply(GROUP)
    return True


def apply_import_hooks(reg: PatchRegistry = registry) -> None:
    """Apply the group ``import-hooks`` (registering it first); with ``megatron.training`` imported: now."""
    if not reg.patches(HOOK_GROUP):
        register_import_hooks(reg)
    reg.apply(HOOK_GROUP)
