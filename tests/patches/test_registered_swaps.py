"""The swaps that used to bypass the registry are registered patches now: listed, applied and reverted.

``torch.compile`` while megatron-core is first imported and ``torch.distributed.is_initialized`` while
megatron-core's dataset builder writes its cache are scoped patches; the import hook on
``megatron.training`` and the Triton-free batch-invariant module are ``ImportHook`` patches.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

import mindspeed_llm
from mindspeed_llm.patches import megatron_lm
from mindspeed_llm.patches.device import JIT_DEFERRAL_GROUP, register_jit_deferral
from mindspeed_llm.patches.registry import ImportHook, PatchRegistry, registry
from mindspeed_llm.patches.single_process import GROUP as SINGLE_PROCESS_GROUP
from mindspeed_llm.patches.single_process import as_single_process
from tests.helpers.launch import run_python


def test_torch_compile_deferral_is_scoped_listed_and_reverted() -> None:
    original = torch.compile
    if not registry.patches(JIT_DEFERRAL_GROUP):  # registered at import unless megatron-core came first
        register_jit_deferral(registry)
    registry.apply(JIT_DEFERRAL_GROUP)  # apply() never applies a scoped patch
    assert torch.compile is original
    scoped_line = "scoped, inside registry.scoped('megatron-import') only: wraps torch.compile"
    assert scoped_line in mindspeed_llm.describe()
    with registry.scoped(JIT_DEFERRAL_GROUP):
        assert torch.compile is not original and torch.compile.__qualname__.endswith("deferred_compile")
        assert "[megatron-import] wraps torch.compile - compiles on each function's first call" in \
            mindspeed_llm.describe()
    assert torch.compile is original


def test_single_process_scope_reverts_even_on_error() -> None:
    original = torch.distributed.is_initialized
    with as_single_process():
        assert torch.distributed.is_initialized is not original
        assert torch.distributed.is_initialized() is False
        active_line = f"[{SINGLE_PROCESS_GROUP}] replaces torch.distributed.is_initialized"
        assert active_line in mindspeed_llm.describe()
    assert torch.distributed.is_initialized is original
    with pytest.raises(KeyError), as_single_process():
        raise KeyError("inside")
    assert torch.distributed.is_initialized is original
    assert not any(p.active for p in registry.patches(SINGLE_PROCESS_GROUP))


def test_single_process_scope_inside_a_process_group(tmp_path) -> None:
    """With a real (gloo) process group: False inside the scope, True again after it."""
    code = textwrap.dedent(f"""
        import mindspeed_llm, torch
        from mindspeed_llm.training.data import _as_single_process
        torch.distributed.init_process_group("gloo", init_method="file://{tmp_path}/pg", rank=0, world_size=1)
        with _as_single_process():
            inside = torch.distributed.is_initialized()
        print(inside, torch.distributed.is_initialized())
        torch.distributed.destroy_process_group()
    """)
    proc = run_python(code, tmp_path, timeout=120)  # a process of its own, forked with torch imported
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]


def test_import_hooks_are_registered_and_revert() -> None:
    hooks = registry.patches(megatron_lm.HOOK_GROUP)
    assert [type(h) for h in hooks] == [ImportHook, ImportHook] and all(h.active for h in hooks)
    text = mindspeed_llm.describe()
    assert "[import-hooks] hooks the import of megatron.training" in text
    assert f"[import-hooks] stands in for {megatron_lm.BATCH_INVARIANT_MODULE}" in text
    finders = list(sys.meta_path)
    stand_in = megatron_lm.BATCH_INVARIANT_MODULE
    if megatron_lm._have("triton"):
        registry.revert(megatron_lm.HOOK_GROUP)
        assert len(sys.meta_path) == len(finders) - 2
        registry.apply(megatron_lm.HOOK_GROUP)
        return
    module = importlib.import_module(stand_in)
    assert module.__file__ == megatron_lm.BATCH_INVARIANT_STAND_IN
    registry.revert(megatron_lm.HOOK_GROUP)
    try:
        assert len(sys.meta_path) == len(finders) - 2 and stand_in not in sys.modules
        with pytest.raises(ModuleNotFoundError, match="triton"):  # megatron-core's own module, without Triton
            importlib.import_module(stand_in)
    finally:
        registry.apply(megatron_lm.HOOK_GROUP)
    assert importlib.import_module(stand_in).__file__ == megatron_lm.BATCH_INVARIANT_STAND_IN


def test_import_hook_then_runs_after_the_module_and_at_once_if_imported(tmp_path, monkeypatch) -> None:
    (tmp_path / "hooked_pkg_for_test.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    reg = PatchRegistry()
    reg.register_import_hook("hooked_pkg_for_test", group="t", description="records the import (test)",
                             then=lambda module: seen.append(module.VALUE))
    reg.apply("t")
    try:
        import hooked_pkg_for_test  # noqa: F401

        assert seen == [1]
        reg.revert("t")
        reg.apply("t")  # already imported: at once
        assert seen == [1, 1]
    finally:
        reg.revert("t")
        sys.modules.pop("hooked_pkg_for_test", None)


def test_a_broken_patch_module_is_not_skipped(tmp_path) -> None:
    """An ImportError of our own op-patch module stops the import (it was swallowed: no base op patches)."""
    code = "import sys\nsys.modules['mindspeed_llm.patches.features'] = None\nimport mindspeed_llm\n"
    proc = run_python(code, tmp_path, timeout=120)  # a process of its own, forked with torch imported
    assert proc.returncode != 0
    assert "ModuleNotFoundError: import of mindspeed_llm.patches.features halted" in proc.stderr


def test_resolve_owner_skips_attribute_paths_and_raises_real_import_errors(tmp_path, monkeypatch) -> None:
    from mindspeed_llm.patches.registry import resolve_owner

    package = tmp_path / "broken_pkg_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("import not_installed_dependency_for_test\n\ndef f():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_for_test"):
        resolve_owner("broken_pkg_for_test.mod.f")
    from megatron.core.models.backends import LocalSpecProvider

    assert resolve_owner("megatron.core.models.backends.LocalSpecProvider.layer_norm") == (LocalSpecProvider,
                                                                                          "layer_norm")
    with pytest.raises(ModuleNotFoundError, match="no module of it is installed"):
        resolve_owner("no_such_package_for_test.sub.f")
    for name in [n for n in sys.modules if n.startswith("broken_pkg_for_test")]:
        del sys.modules[name]
