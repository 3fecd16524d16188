"""The patch layer: a registry of explicit, reversible patches and the per-device base patches."""

from mindspeed_llm.patches.device import apply_base_patches, detect_device
from mindspeed_llm.patches.registry import Patch, PatchRegistry, registry


def describe() -> str:
    """List the detected device and every active patch."""
    return registry.describe()


__all__ = ["Patch", "PatchRegistry", "apply_base_patches", "describe", "detect_device", "registry"]
