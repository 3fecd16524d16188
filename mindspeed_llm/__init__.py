"""mindspeed_llm: a megatron-core plugin library for LLM pretraining on CPU, CUDA GPUs and Ascend NPUs.

Importing the package detects the accelerator and applies the base patches for it (see
``mindspeed_llm.patches``). Feature patches that depend on training flags are enabled explicitly
with :func:`enable_feature_patches` or :func:`enable_feature_patches_from_args`. If Megatron-LM's
``megatron.training`` is imported later (its own ``pretrain_gpt.py``), the patches that let it run
here apply then (``mindspeed_llm.patches.megatron_lm``, hooked by :func:`apply_base_patches`).

The entry scripts (``pretrain_gpt.py``, ``convert_ckpt.py``, ``preprocess_data.py``) read their
command line before torch is imported, so that ``--help`` and a bad flag answer at once: they set
``MINDSPEED_LLM_LATE_PATCHES = True`` in ``__main__`` before importing the package, and call
:func:`apply_base_patches` themselves once the command line is checked.
"""

import sys
import warnings

# megatron-core warns at import, once per module, that the optional fused kernels of Transformer
# Engine and Apex are absent; our patch layer provides the kernels, so the noise is dropped.
warnings.filterwarnings(
    "ignore", message=r".*(Transformer Engine and Apex are not installed|Apex is not installed).*")
# TransformerConfig's own default (cuda_graph_scope="full") triggers its deprecation warning on every build.
warnings.filterwarnings("ignore", message=r"full scope is deprecated")

__version__ = "0.1.0"

__all__ = ["DEVICE", "apply_base_patches", "describe", "freeze_heap_at_exit", "registry", "__version__"]

_LAZY = ("apply_base_patches", "describe", "registry")


def _late_patches() -> bool:
    """True when the running entry script asked to apply the patches itself, after reading its flags."""
    return bool(getattr(sys.modules.get("__main__"), "MINDSPEED_LLM_LATE_PATCHES", False))


def freeze_heap_at_exit() -> None:
    """At interpreter exit, skip the final garbage collections over every object already alive (gc.freeze).

    For the entry scripts: CPython's shutdown runs full collections over the ~400 000 objects of torch's and
    megatron-core's modules (1-2 CPU-seconds; ten times that in wall time on a loaded machine) to free memory
    the OS takes back anyway. Registered first, it runs after every other exit handler; objects freed by
    reference counting are still finalized; only garbage in reference cycles is left to the OS, so files are
    closed by their owners (``with``, ``close()``), never by the collector.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def __getattr__(name: str):
    """``DEVICE`` and the patch-layer functions, imported (with torch) on first use."""
    if name in _LAZY:
        from mindspeed_llm import patches

        return getattr(patches, name)
    if name == "DEVICE":
        from mindspeed_llm.patches import apply_base_patches

        return apply_base_patches()  # idempotent: the device the patches were applied for
    raise AttributeError(f"module 'mindspeed_llm' has no attribute {name!r}")


if not _late_patches():
    from mindspeed_llm.patches import apply_base_patches, describe, registry  # noqa: E402

    DEVICE = apply_base_patches()
