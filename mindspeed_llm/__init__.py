"""mindspeed_llm: a megatron-core plugin library for LLM pretraining on CPU, CUDA GPUs and Ascend NPUs.

Importing the package detects the accelerator and applies the base patches for it (see
``mindspeed_llm.patches``). Feature patches that depend on training flags are enabled explicitly
with :func:`enable_feature_patches` or :func:`enable_feature_patches_from_args`.
"""

import warnings

# megatron-core warns at import, once per module, that the optional fused kernels of Transformer
# Engine and Apex are absent; our patch layer provides the kernels, so the noise is dropped.
warnings.filterwarnings("ignore", message=r".*(Transformer Engine and Apex are not installed|Apex is not installed).*")
# TransformerConfig's own default (cuda_graph_scope="full") triggers its deprecation warning on every build.
warnings.filterwarnings("ignore", message=r"full scope is deprecated")

from mindspeed_llm.patches import apply_base_patches, describe, registry  # noqa: E402

__version__ = "0.1.0"

DEVICE = apply_base_patches()

__all__ = ["DEVICE", "apply_base_patches", "describe", "registry", "__version__"]
