"""mindspeed_llm: a megatron-core plugin library for LLM pretraining on CPU, CUDA GPUs and Ascend NPUs.

Importing the package detects the accelerator and applies the base patches for it (see
``mindspeed_llm.patches``). Feature patches that depend on training flags are enabled explicitly
with :func:`enable_feature_patches` or :func:`enable_feature_patches_from_args`.
"""

from mindspeed_llm.patches import apply_base_patches, describe, registry

__version__ = "0.1.0"

DEVICE = apply_base_patches()

__all__ = ["DEVICE", "apply_base_patches", "describe", "registry", "__version__"]
