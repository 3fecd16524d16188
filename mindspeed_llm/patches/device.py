"""Accelerator detection and the base patches for each device.

``MINDSPEED_LLM_DEVICE=cpu|cuda|npu`` overrides detection. The order is NPU (torch_npu imports and
reports a device), then CUDA, then CPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

import torch

from mindspeed_llm.patches.features import apply_base_op_patches
from mindspeed_llm.patches.megatron_core_origin import check_megatron_core_origin
from mindspeed_llm.patches.megatron_lm import apply_import_hooks
from mindspeed_llm.patches.registry import PatchRegistry, registry

DEVICE_ENV = "MINDSPEED_LLM_DEVICE"
DEVICES = ("cpu", "cuda", "npu")
logger = logging.getLogger(__name__)


def import_torch_npu():
    """``torch_npu`` if it is installed and imports, else None; an install that does not import is said.

    torch_npu is optional: not installed is the ordinary case (CPU or CUDA) and is detected without
    importing anything. An installed torch_npu without Ascend's CANN raises ImportError, RuntimeError or
    OSError on import (and may break ``import torch`` itself): that is said once, as a
    :class:`NpuUnusableWarning` naming the error, and the process runs without an NPU.
    """
    error = torch_npu_import_error()
    return None if error is not None else sys.modules.get("torch_npu")


class NpuUnusableWarning(RuntimeWarning):
    """torch_npu is installed but does not import: no NPU for this process."""


@functools.lru_cache(maxsize=1)
def torch_npu_import_error() -> str | None:
    """None when torch_npu imports; else why not ("not installed", or the error its import raised)."""
    if sys.modules.get("torch_npu") is None and importlib.util.find_spec("torch_npu") is None:
        return "not installed"
    try:
        import torch_npu  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a torch_npu without CANN raises anything, not only ImportError
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        warnings.warn(f"torch_npu is installed but does not import ({reason}): running without an NPU; "
                      "install Ascend CANN (set_env.sh) or uninstall torch_npu", NpuUnusableWarning,
                      stacklevel=2)
        return reason
    return None


def _npu_available() -> bool:
    torch_npu = import_torch_npu()
    return torch_npu is not None and bool(torch_npu.npu.is_available())


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
    check_megatron_core_origin()  # a Megatron-LM clone's megatron/core must not stand in for the wheel's
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
                raise RuntimeError(f"{DEVICE_ENV}=npu but torch_npu cannot be imported "
                                   f"({torch_npu_import_error()}): install torch_npu and Ascend CANN")
            # torch_npu's own redirect of torch.cuda.* / 'cuda' / nccl to the NPU.
            from torch_npu.contrib import transfer_to_npu  # noqa: F401
        # On CUDA torch is left alone.
        registry.device = device
        apply_base_op_patches(device)
        import megatron.core  # noqa: F401  (on every device under the deferral; the entry scripts need it next)
    # Megatron-LM's own training package (a clone on PYTHONPATH) is patched when it is imported.
    apply_import_hooks()
    logger.debug("mindspeed_llm base patches applied for %s", device)
    return device


def compile_on_first_call(compile_fn: Callable) -> Callable:
    """``torch.compile`` that defers: what it decorates is compiled by ``compile_fn`` on its first call."""

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


JIT_DEFERRAL_GROUP = "megatron-import"


@contextlib.contextmanager
def megatron_jit_compiles_on_first_call() -> Iterator[None]:
    """While megatron-core is first imported, ``torch.compile`` defers (and is torch's own again after).

    megatron-core binds ``megatron.core.jit.jit_fuser = torch.compile`` at import, and ~40 functions of its
    ``fusions`` modules are decorated with it at import: the first decoration loads TorchDynamo and Inductor,
    about 40% of a CPU process's start-up, for fused functions that most runs (every CPU run) never call.
    Deferred, a function that is called compiles then, as torch.compile's own wrapper does on a first call.
    A scoped patch (group ``megatron-import``): right only while megatron-core's modules are executed;
    ``megatron.core.jit.jit_fuser`` keeps the deferring compile it took then.
    """
    if "megatron.core.jit" in sys.modules:  # imported before us: its jit_fuser is torch's
        yield
        return
    with registry.scoped_registered(JIT_DEFERRAL_GROUP, register_jit_deferral):
        yield


def register_jit_deferral(reg: PatchRegistry) -> None:
    """Register (not apply) the scoped ``torch.compile`` patch of group ``megatron-import``."""
    reg.register("torch.compile", wrapper=compile_on_first_call, group=JIT_DEFERRAL_GROUP, scoped=True,
                 description="compiles on each function's first call, not at decoration: megatron-core's "
                             "import decorates ~40 fused functions (TorchDynamo + Inductor load otherwise)")


def revert_base_patches() -> None:
    """Undo every patch (device layer included); ``apply_base_patches`` can apply them again."""
    registry.revert()
    registry.device = None
