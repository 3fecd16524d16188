"""Every patch's recorded megatron-core signatures against the installed megatron-core, and the error a
difference gives.

The registration functions of every group are called on a fresh registry (nothing applied) while the
base patches are reverted, so each recorded signature is compared with megatron-core's (and torch's)
own objects. Megatron-LM's group needs ``megatron.training``: it is checked in a subprocess on the
stand-in of ``tests/patches/megatron_lm_standin`` (core_v0.16.1's signatures; a real clone is checked
by the same apply when ``bench/megatron_lm_dropin.py`` runs).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

import megatron.core
import pytest

from mindspeed_llm.patches import device, device_cpu, features, inference, megatron_lm, single_process
from mindspeed_llm.patches.device import apply_base_patches, revert_base_patches
from mindspeed_llm.patches.registry import (
    MEGATRON_CORE_VERSION,
    ImportHook,
    MegatronCoreVersionWarning,
    Patch,
    PatchRegistry,
    PatchSignatureError,
    resolve_owner,
    signature_text,
)
from tests.conftest import REPO_ROOT

STANDIN = Path(__file__).parent / "megatron_lm_standin"


def _every_group() -> list[PatchRegistry]:
    """Fresh registries holding every patch of every group (feature variants that share a target apart)."""
    everything = PatchRegistry()
    device_cpu.register_cpu_patches(everything)
    features._register_base(everything)
    features._register_cpu_base(everything)
    features.register_feature_patches(everything, use_flash_attn=True, use_fused_rmsnorm=True,
                                      use_fused_rotary_pos_emb=True, use_fused_swiglu=True, device="cpu")
    inference.register_inference_patches(everything, "cpu")
    single_process.register_single_process_patch(everything)
    device.register_jit_deferral(everything)
    megatron_lm.register_import_hooks(everything)
    context_parallel = PatchRegistry()
    features.register_feature_patches(context_parallel, context_parallel=True, device="cpu")
    return [everything, context_parallel]


@pytest.fixture
def megatron_originals():
    """The base patches reverted: every target is megatron-core's / torch's own object."""
    revert_base_patches()
    try:
        yield
    finally:
        apply_base_patches()


def test_installed_megatron_core_is_the_recorded_version() -> None:
    assert megatron.core.__version__ == MEGATRON_CORE_VERSION


def test_every_recorded_signature_matches_the_installed_megatron_core(megatron_originals) -> None:
    patches = [p for reg in _every_group() for p in reg.patches()]
    assert {p.group for p in patches} >= {"device", "ops", "ops-cpu", "features", "inference",
                                          "single-process", "megatron-import", "import-hooks"}
    checked = [p for p in patches if isinstance(p, Patch) and (p.signature or p.relies_on)]
    assert len(checked) >= 25
    mismatches = [error for error in (p.mismatch() for p in checked) if error is not None]
    assert not mismatches, "\n".join(mismatches)


def _callable_value(patch: Patch):
    owner, attr = resolve_owner(patch.target)
    value = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
    return value.__func__ if isinstance(value, staticmethod | classmethod) else value


def test_every_replaced_megatron_callable_records_its_signature(megatron_originals) -> None:
    """A new patch of a megatron-core function, method or class must say which signature it expects."""
    unrecorded = [p.target for reg in _every_group() for p in reg.patches()
                  if isinstance(p, Patch) and p.target.startswith("megatron.") and p.signature is None
                  and (inspect.isfunction(_callable_value(p)) or inspect.isclass(_callable_value(p)))]
    assert not unrecorded, unrecorded


def test_every_patch_says_what_it_replaces_and_why() -> None:
    patches = [p for reg in _every_group() for p in reg.patches()]
    assert all(len(p.description.strip()) >= 10 for p in patches), [p.target for p in patches
                                                                    if len(p.description.strip()) < 10]
    assert all(p.megatron_core == MEGATRON_CORE_VERSION for p in patches)


def test_a_changed_recorded_signature_makes_apply_fail_with_one_line(megatron_originals) -> None:
    reg = PatchRegistry()
    rope, rms = None, None
    for patch in features.register_feature_patches(reg, use_fused_rmsnorm=True,
                                                   use_fused_rotary_pos_emb=True):
        rope = patch if patch.target == features.ROPE_BSHD else rope
        rms = patch if patch.target.endswith("RMSNorm.kernel") else rms
    owner, attr = resolve_owner(features.ROPE_BSHD)
    megatrons = getattr(owner, attr)
    rms_kernel = _callable_value(rms)
    found = signature_text(megatrons)
    assert rope.signature == found  # the real record matches before it is edited
    rope.signature = found.replace("mscale=1.0", "mscale=2.0")
    with pytest.raises(PatchSignatureError) as err:
        reg.apply(features.FEATURE_GROUP)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"patch [features] {features.ROPE_BSHD} expects {rope.signature} (written against "
                       f"megatron-core 0.16.1) but found {found} (installed megatron-core "
                       f"{megatron.core.__version__}): pip install megatron-core==0.16.1")
    # Nothing of the group was applied: megatron's function and our RMSNorm kernel are untouched.
    assert getattr(owner, attr) is megatrons and not rope.active and not rms.active
    assert _callable_value(rms) is rms_kernel


def test_a_changed_member_signature_of_a_replaced_class_fails_apply(megatron_originals) -> None:
    reg = PatchRegistry()
    device_cpu.register_cpu_patches(reg)
    tracker = next(p for p in reg.patches() if p.target.endswith("CudaRNGStatesTracker"))
    tracker.relies_on = {**tracker.relies_on, ".fork": "(self, name='model-parallel-rng', extra=None)"}
    expected = (r"CudaRNGStatesTracker relies on .*CudaRNGStatesTracker\.fork, which expects .* but found "
                r"\(self, name='model-parallel-rng'\)")
    with pytest.raises(PatchSignatureError, match=expected):
        tracker.apply()
    assert not tracker.active


def test_leading_parameters_record_matches_only_the_named_prefix() -> None:
    def f(a, b=None, c=1):
        return a

    assert Patch("x.f", f, description="test record", signature="(a, b=None, ...)").signature
    from mindspeed_llm.patches.registry import _matches

    assert _matches("(a, b=None, ...)", f)[0]
    assert not _matches("(a, bb=None, ...)", f)[0]
    assert not _matches("(a, b=None)", f)[0]
    assert _matches("(a, b=None, c=1)", f)[0]


def test_a_patch_needs_a_description() -> None:
    reg = PatchRegistry()
    with pytest.raises(TypeError, match="description"):
        reg.register("torch.cuda.current_device", lambda: 0)
    with pytest.raises(ValueError, match="description= must say what it replaces and why"):
        reg.register("torch.cuda.current_device", lambda: 0, description="  ")


def test_another_megatron_core_version_warns_once_and_applies(megatron_originals) -> None:
    """A version difference alone warns (the signatures decide): a patch recorded against another version."""
    reg = PatchRegistry()
    patch = reg.add(Patch(features.ROPE_BSHD, wrapper=lambda f: f, group="t",
                          description="test of the warning", megatron_core="0.15.0"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.apply("t")
        reg.revert("t")
        reg.apply("t")
    try:
        lines = [str(w.message) for w in caught if issubclass(w.category, MegatronCoreVersionWarning)]
        assert lines == [f"megatron-core {megatron.core.__version__} is installed; mindspeed_llm's patches "
                         "are written against 0.15.0 and their signatures match this one, but bodies they "
                         "track may differ: pip install megatron-core==0.15.0"]
        assert patch.active
    finally:
        reg.revert("t")


def test_megatron_lm_group_signatures_on_the_core_v0_16_1_stand_in(tmp_path) -> None:
    code = (
        "import mindspeed_llm\n"
        "import megatron.training\n"
        "from mindspeed_llm.patches import megatron_lm\n"
        "patches = mindspeed_llm.registry.patches(megatron_lm.GROUP)\n"
        "assert len(patches) == 7 and all(p.active and p.signature for p in patches)\n"
        "for p in patches:\n"
        "    print(p.target, p.mismatch())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{STANDIN}{os.pathsep}{REPO_ROOT}", "MINDSPEED_LLM_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 7 and all(line.endswith(" None") for line in lines), proc.stdout
    assert any(line.startswith("megatron.training.initialize.initialize_megatron ") for line in lines)


def test_import_hooks_have_nothing_to_check() -> None:
    hooks = [p for p in _every_group()[0].patches() if isinstance(p, ImportHook)]
    assert [h.target for h in hooks] == [megatron_lm.TRAINING_PACKAGE, megatron_lm.BATCH_INVARIANT_MODULE]
    assert all(h.mismatch() is None for h in hooks)
