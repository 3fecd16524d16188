"""The patch layer: a registry of explicit, described, checked and reversible patches, and the per-device
base patches."""

from mindspeed_llm.patches.device import apply_base_patches, detect_device
from mindspeed_llm.patches.registry import (
    MEGATRON_CORE_VERSION,
    ImportHook,
    Patch,
    PatchError,
    PatchRegistry,
    PatchSignatureError,
    registry,
)


def describe() -> str:
    """List the detected device, the megatron-core version, every active patch and the scoped ones."""
    return registry.describe()


__all__ = ["MEGATRON_CORE_VERSION", "ImportHook", "Patch", "PatchError", "PatchRegistry",
           "PatchSignatureError", "apply_base_patches", "describe", "detect_device", "registry"]
