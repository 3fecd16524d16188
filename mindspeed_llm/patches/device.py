"""Accelerator detection and the base patches for each device.

``MINDSPEED_LLM_DEVICE=cpu|cuda|npu`` overrides detection. The order is NPU (torch_npu imports and
reports a device), then CUDA, then CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator

import torch

from mindspeed_llm.patches.registry import registry

DEVICE_ENV = "MINDSPEED_LLM_DEVICE"
DEVICES = ("cpu", "cuda", "npu")
logger = logging.getLogger(__name__)


def import_torch_npu():
    """Import torch_npu if it is present and usable, else None.

    An installed torch_npu without Ascend's CANN raises ImportError, RuntimeError or OSError on
    import (and may break ``import torch`` itself), so any exception means "not usable".
    """
    try:
        import torch_npu  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means no usable NPU stack
        return None
    return torch_npu


def _npu_available() -> bool:
    torch_npu = import_torch_npu()
    if torch_npu is None:
        return False
    try:
        return bool(torch_npu.npu.is_available())
    except Exception:  # noqa: BLE001
        return False


def detect_device() -> str:
    """Return 'npu', 'cuda' or 'cpu' for this process."""
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced:
        if forced not in DEVICES:
            raise ValueError(f"{DEVICE_ENV}={forced!r}: expected one of {', '.join(DEVICES)}")
        return forced
    if _npu_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def distributed_backend(device: str | None = None) -> str:
    """The collective backend that goes with the device: gloo, nccl or hccl."""
    device = device or registry.device or detect_device()
    return {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device]


def apply_base_patches(device: str | None = None) -> str:
    """Apply the device layer and base op patches for ``device`` (detected when None); idempotent."""
    if registry.device is not None and device in (None, registry.device):
        return registry.device
    device = device or detect_device()
    with megatron_jit_compiles_on_first_call():  # the CPU layer and the op patches import megatron-core
        if device == "cpu":
            from mindspeed_llm.patches.device_cpu import GROUP, register_cpu_patches

            if not registry.patches(GROUP):
                register_cpu_patches(registry)
            registry.apply(GROUP)
        elif device == "npu":
            torch_npu = import_torch_npu()
            if torch_npu is None:
                raise RuntimeError(f"{DEVICE_ENV}=npu but torch_npu cannot be imported: install torch_npu and CANN")
            # torch_npu's own redirect of torch.cuda.* / 'cuda' / nccl to the NPU.
            from torch_npu.contrib import transfer_to_npu  # noqa: F401
        # On CUDA torch is left alone.
        registry.device = device
        _apply_base_op_patches(device)
        import megatron.core  # noqa: F401  (on every device under the deferral; the entry scripts need it next)
    # Megatron-LM's own training package (a clone on PYTHONPATH) is patched when it is imported.
    from mindspeed_llm.patches.megatron_lm import install_import_hook

    install_import_hook()
    logger.debug("mindspeed_llm base patches applied for %s", device)
    return device


def compile_on_first_call(compile_fn: Callable) -> Callable:
    """``torch.compile`` that defers: the function it decorates is compiled by ``compile_fn`` on its first call."""

    def deferred_compile(model: Callable | None = None, **options):
        if model is None:  # @torch.compile(**options)
            return functools.partial(deferred_compile, **options)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_fn(model, **options)
            return compiled(*args, **kwargs)

        return call

    return deferred_compile


@contextlib.contextmanager
def megatron_jit_compiles_on_first_call() -> Iterator[None]:
    """While megatron-core is first imported, ``torch.compile`` defers (and is torch's own again after).

    megatron-core binds ``megatron.core.jit.jit_fuser = torch.compile`` at import, and ~40 functions of its
    ``fusions`` modules are decorated with it at import: the first decoration loads TorchDynamo and Inductor,
    about 40% of a CPU process's start-up, for fused functions that most runs (every CPU run) never call.
    Deferred, a function that is called compiles then, as torch.compile's own wrapper does on a first call.
    """
    if "megatron.core.jit" in sys.modules:  # imported before us: its jit_fuser is torch's
        yield
        return
    original = torch.compile
    torch.compile = compile_on_first_call(original)
    try:
        yield
    finally:
        torch.compile = original


def _apply_base_op_patches(device: str) -> None:
    try:
        from mindspeed_llm.patches.features import apply_base_op_patches
    except ImportError:
        return
    apply_base_op_patches(device)


def revert_base_patches() -> None:
    """Undo every patch (device layer included); ``apply_base_patches`` can apply them again."""
    registry.revert()
    registry.device = None
