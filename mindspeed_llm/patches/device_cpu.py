"""Run megatron-core (and scripts written for CUDA) unchanged on a CPU-only machine.

This is our equivalent of ``torch_npu.contrib.transfer_to_npu``, aimed at the CPU. Everything is in
this one module and registered with the patch registry (group ``"device"``), so ``revert`` undoes
it. Five redirections are enough for megatron-core 0.16.1 (see docs/architecture.md):

1. **device**: ``torch.cuda.current_device/set_device/device_count/synchronize/streams/events/
   memory stats/nvtx`` answer for the CPU;
2. **factories**: ``device="cuda"`` / ``device=0`` in tensor factories, ``Tensor.cuda()``,
   ``Tensor.to("cuda")``, ``Module.cuda()`` and ``pin_memory`` land on the CPU;
3. **type strings**: ``Tensor.type()`` reports ``torch.cuda.*Tensor`` for CPU tensors, but only
   when the caller is megatron-core (its optimizer and grad-clipping assert on those names);
4. **RNG**: the CUDA RNG state and megatron's CUDA RNG tracker run on the CPU generator;
5. **collectives**: ``nccl`` (and ``cpu:gloo,cuda:nccl``) become ``gloo``.

Pipeline schedules must use ``batch_p2p_comm=False`` on gloo (with virtual stages batched p2p
silently gives wrong gradients upstream); training arguments enforce that.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from typing import Any

import torch
import torch.utils._device

from mindspeed_llm.patches.registry import PatchRegistry

GROUP = "device"
_CPU = torch.device("cpu")

# Factories whose `device=` keyword must be redirected.
_FACTORIES = (
    "empty", "zeros", "ones", "full", "tensor", "as_tensor", "arange", "range", "linspace",
    "logspace", "eye", "rand", "randn", "randint", "randperm", "empty_strided", "empty_like",
    "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like", "tril_indices",
    "triu_indices", "normal", "scalar_tensor",
)

# Tensor methods that make a tensor with a `device=` keyword (megatron's all-to-all: `input.new_empty(...,
# device=torch.cuda.current_device())`).
_TENSOR_FACTORIES = ("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor", "new_empty_strided")


def _is_accelerator_device(device: Any) -> bool:
    """True for anything that names a CUDA device: 'cuda', 'cuda:1', 0, torch.device('cuda')."""
    if device is None:
        return False
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _cpu_device(device: Any) -> Any:
    return _CPU if _is_accelerator_device(device) else device


def _redirect_factory(fn):
    @functools.wraps(fn)
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False  # pinning needs a CUDA driver
        return fn(*args, **kwargs)

    return factory


def _tensor_to(original):
    @functools.wraps(original)
    def to(self, *args, **kwargs):
        if args and _is_accelerator_device(args[0]):
            args = (_CPU, *args[1:])
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return original(self, *args, **kwargs)

    return to


def _tensor_cuda(self: torch.Tensor, device: Any = None, non_blocking: bool = False,
                 **kwargs) -> torch.Tensor:
    """``Tensor.cuda()`` on the CPU device layer: the tensor stays where it is (the CPU)."""
    memory_format = kwargs.get("memory_format")
    if memory_format is not None:
        return self.contiguous(memory_format=memory_format)
    return self


def _module_cuda(self: torch.nn.Module, device: Any = None) -> torch.nn.Module:
    """``Module.cuda()`` on the CPU device layer: parameters stay on the CPU."""
    return self


def _tensor_pin_memory(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return self


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.ByteTensor": "torch.cuda.ByteTensor",
    "torch.BoolTensor": "torch.cuda.BoolTensor",
}


def _tensor_type(original):
    @functools.wraps(original)
    def type_(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if args or kwargs:
            return result
        # Narrow: only megatron-core asks for CUDA type names (optimizer, grad clipping).
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("megatron.core"):
            return _CUDA_TYPE_NAMES.get(result, result)
        return result

    return type_


# --- torch.cuda: device, streams, events, memory -------------------------------------------------


class CpuStream:
    """Stands in for ``torch.cuda.Stream`` on the CPU: work is synchronous, so waits are no-ops."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs) -> None:
        self.device = _CPU
        self.priority = priority

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> CpuEvent:
        event = event or CpuEvent()
        event.record(self)
        return event

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> CpuStream:
        return self

    def __exit__(self, *exc) -> None:
        return None


class CpuEvent:
    """Stands in for ``torch.cuda.Event``: records wall time so ``elapsed_time`` is meaningful."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False) -> None:
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        import time

        self._time = time.perf_counter()

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: CpuEvent) -> float:
        if self._time is None or end._time is None:
            raise RuntimeError("CpuEvent.elapsed_time: both events must be recorded first")
        return (end._time - self._time) * 1000.0


_DEFAULT_STREAM = CpuStream()


def _current_stream(device: Any = None) -> CpuStream:
    return _DEFAULT_STREAM


@contextlib.contextmanager
def _stream_context(stream: Any = None):
    yield stream


def _noop(*args, **kwargs) -> None:
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _current_device() -> int:
    return 0


def _device_count() -> int:
    return 1


def _memory_stats(*args, **kwargs) -> dict:
    return {}


@contextlib.contextmanager
def _nvtx_range(*args, **kwargs):
    yield


# --- RNG: the CUDA generator is the CPU generator ------------------------------------------------


def _get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.default_generator.get_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    torch.default_generator.set_state(new_state)


def _manual_seed(seed: int) -> None:
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all, which would recurse here.
    torch.default_generator.manual_seed(int(seed))


def _megatron_get_cuda_rng_state(device: Any = "cuda", clone: bool = False,
                                 graph_safe: bool = False) -> torch.Tensor:
    """Replaces ``tensor_parallel.random._get_cuda_rng_state``: the state of the CPU generator."""
    return torch.default_generator.get_state()


def _megatron_set_cuda_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    """Replaces ``tensor_parallel.random._set_cuda_rng_state`` (which defers to CUDA's lazy init)."""
    torch.default_generator.set_state(new_state)


def _cpu_rng_tracker_class():
    from megatron.core.tensor_parallel import random as mc_random

    base = mc_random.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):
        """megatron's CUDA RNG tracker on the CPU generator.

        Tracks megatron 0.16.1's ``CudaRNGStatesTracker.fork`` without its check that the CPU state
        is untouched inside the fork: here the tracked generator *is* the CPU generator.
        """

        @contextlib.contextmanager
        def fork(self, name: str = mc_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.default_generator.get_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.default_generator.set_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.default_generator.get_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.default_generator.set_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


# --- collectives -------------------------------------------------------------------------------


def _gloo_backend(backend: Any) -> Any:
    if backend is None:
        return "gloo"
    name = str(backend).lower()
    if "nccl" in name or "hccl" in name:
        return "gloo"
    return backend


def _init_process_group(original):
    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if args:
            args = (_gloo_backend(args[0]), *args[1:])
        else:
            kwargs["backend"] = _gloo_backend(kwargs.get("backend"))
        kwargs.pop("device_id", None)  # binding a process group to a CUDA device
        return original(*args, **kwargs)

    return init_process_group


def _new_group(original):
    @functools.wraps(original)
    def new_group(*args, **kwargs):
        if len(args) >= 3:
            args = (*args[:2], _gloo_backend(args[2]), *args[3:])
        elif kwargs.get("backend") is not None:
            kwargs["backend"] = _gloo_backend(kwargs["backend"])
        kwargs.pop("pg_options", None)  # NCCL options mean nothing to gloo
        return original(*args, **kwargs)

    return new_group


def _barrier(original):
    @functools.wraps(original)
    def barrier(*args, **kwargs):
        kwargs.pop("device_ids", None)  # gloo rejects device_ids
        return original(*args, **kwargs)

    return barrier


def _config_post_init(original):
    @functools.wraps(original)
    def __post_init__(self):
        original(self)
        # gloo: batched p2p gives wrong gradients with virtual pipeline stages; plain send/recv is right.
        self.batch_p2p_comm = False

    return __post_init__


def _own_copy(fn: Any, name: str) -> Any:
    """A distinct function object per patched name: torch._dynamo maps torch objects to their names
    and refuses one object under two names ("Duplicate torch object")."""
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__doc__, copy.__qualname__ = fn.__doc__, f"cpu_{name}"
    return copy


def register_cpu_patches(registry: PatchRegistry) -> None:
    """Register (not apply) every CPU redirection in the ``device`` group."""
    # torch caches the set of its factory functions on first use (device contexts such as
    # `with torch.device("meta")`, which transformers uses to build models, consult it): fill the
    # cache with the originals before they are wrapped, or the wrappers escape those contexts.
    torch.utils._device._device_constructors()
    r = functools.partial(registry.register, group=GROUP)
    # 1. device
    cuda_constants = {
        "current_device": _current_device,
        "set_device": _noop,
        "device_count": _device_count,
        "synchronize": _noop,
        "empty_cache": _noop,
        "current_stream": _current_stream,
        "default_stream": _current_stream,
        "set_stream": _noop,
        "stream": _stream_context,
        "Stream": CpuStream,
        "Event": CpuEvent,
        "memory_allocated": _zero,
        "max_memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_reserved": _zero,
        "reset_peak_memory_stats": _noop,
        "reset_max_memory_allocated": _noop,
        "memory_stats": _memory_stats,
        "get_rng_state": _get_rng_state,
        "set_rng_state": _set_rng_state,
        "manual_seed": _manual_seed,
        "manual_seed_all": _manual_seed,
        "seed": _noop,
        "seed_all": _noop,
    }
    copies = {name: _own_copy(value, name) for name, value in cuda_constants.items()}
    for name, value in copies.items():
        r(f"torch.cuda.{name}", value, description="CPU stands in for the CUDA device")
    # In torch, torch.cuda.get/set_rng_state *are* torch.cuda.random's: keep one object for both names.
    r("torch.cuda.random.get_rng_state", copies["get_rng_state"],
      description="the CUDA RNG state is the CPU generator's (same object as torch.cuda.get_rng_state)")
    r("torch.cuda.random.set_rng_state", copies["set_rng_state"],
      description="the CUDA RNG state is the CPU generator's (same object as torch.cuda.set_rng_state)")
    r("torch.cuda.default_generators", (torch.default_generator,),
      description="the one 'CUDA' generator is the CPU generator (megatron's RNG tracker reads it)")
    no_ranges = "no NVTX profiler ranges on the CPU"
    r("torch.cuda.nvtx.range_push", _own_copy(_zero, "range_push"), description=no_ranges)
    r("torch.cuda.nvtx.range_pop", _own_copy(_zero, "range_pop"), description=no_ranges)
    r("torch.cuda.nvtx.mark", _own_copy(_noop, "mark"), description="no NVTX profiler marks on the CPU")
    r("torch.cuda.nvtx.range", _nvtx_range, description=no_ranges)
    # 2. factories and moves
    for name in _FACTORIES:
        if hasattr(torch, name):
            r(f"torch.{name}", wrapper=_redirect_factory, description="device='cuda' -> cpu")
    for name in _TENSOR_FACTORIES:
        r(f"torch.Tensor.{name}", wrapper=_redirect_factory, description="device='cuda' -> cpu")
    r("torch.Tensor.to", wrapper=_tensor_to, description="'cuda' -> cpu")
    r("torch.Tensor.cuda", _tensor_cuda, description="Tensor.cuda() keeps the tensor on the CPU")
    r("torch.Tensor.pin_memory", _tensor_pin_memory, description="no pinned memory without a CUDA driver")
    r("torch.nn.Module.cuda", _module_cuda, description="Module.cuda() keeps the parameters on the CPU")
    # 3. type strings (narrow: megatron-core callers only)
    r("torch.Tensor.type", wrapper=_tensor_type, description="CUDA type names for megatron-core callers")
    # 4. RNG
    r("megatron.core.tensor_parallel.random._get_cuda_rng_state", _megatron_get_cuda_rng_state,
      signature="(device='cuda', clone=False, graph_safe=False)",
      description="megatron's private CUDA RNG getter reads the CPU generator")
    r("megatron.core.tensor_parallel.random._set_cuda_rng_state", _megatron_set_cuda_rng_state,
      signature="(new_state, device=-1, graph_safe=False)",
      description="megatron's private CUDA RNG setter (CUDA's lazy init) sets the CPU generator")
    r("megatron.core.tensor_parallel.random.CudaRNGStatesTracker", _cpu_rng_tracker_class(),
      signature="(use_cudagraphable_rng=False, is_inference_rng_tracker=False)",
      relies_on={".fork": "(self, name='model-parallel-rng')", ".add": "(self, name, seed)"},
      description="RNG tracker on the CPU generator (its fork tracks 0.16.1's)")
    # 5. collectives
    r("megatron.core.model_parallel_config.ModelParallelConfig.__post_init__", wrapper=_config_post_init,
      signature="(self)", description="batch_p2p_comm=False (gloo)")
    # torch is not pinned: the wrappers rely only on the leading parameters, the same in every torch >= 2.4.
    r("torch.distributed.init_process_group", wrapper=_init_process_group,
      signature="(backend=None, init_method=None, ...)", description="nccl -> gloo")
    r("torch.distributed.new_group", wrapper=_new_group,
      signature="(ranks=None, timeout=None, backend=None, ...)", description="nccl -> gloo")
    r("torch.distributed.barrier", wrapper=_barrier, description="no device_ids (gloo rejects them)")
