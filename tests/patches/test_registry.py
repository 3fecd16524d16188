"""The patch registry: apply / revert round trips, idempotence, rebinding of copies, describe()."""

import types

import megatron.core.tensor_parallel.random as mc_random
import megatron.core.transformer.cuda_graphs as mc_cuda_graphs
import pytest
import torch

import mindspeed_llm
from mindspeed_llm.patches.device import apply_base_patches, revert_base_patches
from mindspeed_llm.patches.registry import Patch, PatchRegistry, registry


@pytest.fixture
def reapply_base_patches():
    yield
    apply_base_patches()


def _snapshot(patches):
    from mindspeed_llm.patches.registry import resolve_owner

    snap = {}
    for patch in patches:
        if not isinstance(patch, Patch) or patch.scoped:
            continue  # import hooks and scoped patches: test_registered_swaps.py
        owner, attr = resolve_owner(patch.target)
        snap[patch.target] = (owner.__dict__.get(attr, "<inherited>") if isinstance(owner, type)
                              else getattr(owner, attr))
    return snap


def test_revert_restores_megatron_and_torch_exactly(reapply_base_patches) -> None:
    assert mindspeed_llm.DEVICE == "cpu"
    patched = _snapshot(registry.patches())
    revert_base_patches()
    original = _snapshot(registry.patches())
    assert not any(p.active for p in registry.patches())
    # Every target is back to what megatron-core / torch define themselves.
    assert torch.cuda.current_device.__module__ == "torch.cuda"
    assert mc_random.CudaRNGStatesTracker.__module__ == "megatron.core.tensor_parallel.random"
    assert mc_cuda_graphs.CudaRNGStatesTracker is mc_random.CudaRNGStatesTracker  # the `from` copy too
    assert "to" not in torch.Tensor.__dict__  # inherited attribute removed again, not shadowed
    for target, value in original.items():
        assert value is not patched[target] or target.endswith("default_generators"), target
    # Apply again, then compare with the first application: same set of patched targets.
    apply_base_patches()
    assert set(_snapshot(registry.patches())) == set(patched)
    assert mc_cuda_graphs.CudaRNGStatesTracker is mc_random.CudaRNGStatesTracker
    assert mc_random.CudaRNGStatesTracker.__name__ == "CpuRNGStatesTracker"


def test_apply_twice_is_a_no_op() -> None:
    before = _snapshot(registry.patches())
    registry.apply()
    apply_base_patches()
    assert _snapshot(registry.patches()) == before


def test_wrapper_rebinds_from_import_copies_and_reverts() -> None:
    target_module = types.ModuleType("mindspeed_llm._test_target")
    target_module.f = lambda x: x + 1
    copy_holder = types.ModuleType("mindspeed_llm._test_copy")
    copy_holder.f = target_module.f
    import sys

    sys.modules[target_module.__name__] = target_module
    sys.modules[copy_holder.__name__] = copy_holder
    try:
        reg = PatchRegistry()
        original = target_module.f
        reg.register("mindspeed_llm._test_target.f", wrapper=lambda fn: (lambda x: fn(x) * 10), group="t",
                     description="times ten (test)")
        reg.apply("t")
        assert target_module.f(1) == 20 and copy_holder.f(1) == 20
        reg.apply("t")  # no-op: not wrapped twice
        assert target_module.f(1) == 20
        reg.revert("t")
        assert target_module.f is original and copy_holder.f is original
    finally:
        del sys.modules[target_module.__name__], sys.modules[copy_holder.__name__]


def test_register_needs_exactly_one_of_replacement_or_wrapper() -> None:
    reg = PatchRegistry()
    with pytest.raises(ValueError, match="exactly one"):
        reg.register("torch.cuda.current_device", description="neither given (test)")


def test_describe_lists_device_and_active_patches() -> None:
    text = mindspeed_llm.describe()
    assert "device: cpu" in text.splitlines()[0]
    assert "[device] replaces torch.cuda.current_device" in text
    assert "megatron.core.tensor_parallel.random.CudaRNGStatesTracker" in text


def test_unregister_reverts_and_forgets_a_group() -> None:
    import sys

    module = types.ModuleType("mindspeed_llm._test_unregister")
    module.g = lambda: "original"
    sys.modules[module.__name__] = module
    try:
        reg = PatchRegistry()
        reg.register("mindspeed_llm._test_unregister.g", lambda: "patched", group="tmp", description="test")
        reg.apply("tmp")
        assert module.g() == "patched"
        reg.unregister("tmp")
        assert module.g() == "original" and reg.patches("tmp") == []
    finally:
        del sys.modules[module.__name__]
