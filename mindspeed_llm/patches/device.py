"""Accelerator detection and the base patches per device (filled in by the device layer)."""

import os

DEVICE_ENV = "MINDSPEED_LLM_DEVICE"


def detect_device() -> str:
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced:
        return forced
    return "cpu"


def apply_base_patches() -> str:
    return detect_device()
