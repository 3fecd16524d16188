"""The patch registry: explicit, described, checked and reversible changes to code we do not own.

A :class:`Patch` names its target by dotted path (``package.module.Owner.attr``), why it is there
(``description``, required), and either a replacement or a wrapper factory that receives the
original. ``apply()`` sets the new value on the owner and also rebinds every already-imported module
that copied the original with ``from x import f``; ``revert()`` restores all of it exactly. Applying
an active patch again does nothing. An :class:`ImportHook` is the same for the import system: a
finder put first on ``sys.meta_path`` while it is active.

**What a patch was written against.** Every patch records the megatron-core version it was written
for (:data:`MEGATRON_CORE_VERSION`, the version ``setup.py`` pins) and, where the signature of what it
replaces or wraps matters (a wrapper that forwards megatron's parameters by position, a replaced
function or method, a private name), that signature as ``str(inspect.signature(original))`` without
annotations (``signature=``), plus the signatures of other callables it relies on (``relies_on=``:
``".fork"`` is a member of the target, a dotted path is any other callable). ``apply()`` compares
them with the installed code first; a difference is one :class:`PatchSignatureError` line naming the
patch, the expected and found signatures, the installed megatron-core and the fix, and nothing of the
group is applied. Annotations are left out because they do not change how a call binds and their text
differs between Python versions; a recorded signature ending in ``, ...)`` lists only the leading
parameters a wrapper relies on (for torch, which is not pinned: those stay the same across versions).

**A different megatron-core version alone warns, once** (:class:`MegatronCoreVersionWarning`), it does
not fail: the version number does not say that a patch is wrong (a patch release, a local build with
a suffix), while a changed signature always does, and that is checked patch by patch. The warning
still names the pinned version, because a patch whose signature is unchanged can track a body that
changed (docstrings say which ones do).

**Scoped patches** (``scoped=True``) are right only inside one call (a swap that must not outlive
it, e.g. ``torch.compile`` while megatron-core is first imported): :meth:`PatchRegistry.apply` leaves
them alone and :meth:`PatchRegistry.scoped` applies their group for a ``with`` block and reverts it
after. Registry form still gives them a description, a check and ``describe()``; a plain attribute
swap in a ``try``/``finally`` would give none of those.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MEGATRON_CORE_VERSION = "0.16.1"
"""The megatron-core version every patch here was written against (setup.py pins it)."""

_MISSING = object()
_INHERITED = object()


class PatchError(RuntimeError):
    """A patch that cannot be registered or applied as written."""


class PatchSignatureError(PatchError):
    """What a patch replaces or wraps does not have the signature the patch was written against."""


class MegatronCoreVersionWarning(UserWarning):
    """The installed megatron-core is not the version the patches were written against."""


def resolve_owner(target: str) -> tuple[Any, str]:
    """Return ``(owner, attribute)`` for a dotted path, importing the longest module prefix.

    A prefix that is not a module (``Owner.attr``) or not installed is skipped; a module that exists
    but fails to import (a broken dependency of megatron-core or of ours) raises its own error.
    """
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # this prefix (or a package above it) is not a module: try a shorter one
            raise  # the module exists and one of its own imports is missing
        for name in parts[split:-1]:
            if not hasattr(owner, name):
                raise PatchError(f"patch target {target!r}: {'.'.join(parts[:split])} has no {name!r}")
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ModuleNotFoundError(f"patch target {target!r}: no module of it is installed", name=parts[0])


def signature_text(obj: Any) -> str:
    """``str(inspect.signature(obj))`` without annotations: what a patch records and checks."""
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    signature = inspect.signature(obj)
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def _matches(expected: str, obj: Any) -> tuple[bool, str]:
    """(whether ``obj`` has the ``expected`` signature text, the text found)."""
    try:
        found = signature_text(obj)
    except (TypeError, ValueError):
        return False, f"(no Python signature: {type(obj).__name__})"
    if not expected.endswith(", ...)"):
        return found == expected, found
    # Leading parameters only: some prefix of the found parameters must print as the expected ones.
    signature = inspect.signature(obj.__func__ if isinstance(obj, staticmethod | classmethod) else obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    want = expected[: -len(", ...)")] + ")"
    for count in range(len(params) + 1):
        if str(inspect.Signature(params[:count])) == want:
            return True, found
    return False, found


def installed_megatron_core() -> str | None:
    """The installed megatron-core's version if megatron-core is imported, else None (imports nothing)."""
    module = sys.modules.get("megatron.core")
    return getattr(module, "__version__", None) if module is not None else None


_VERSION_WARNED: set[tuple[str, str]] = set()


def _warn_on_other_version(recorded: str) -> None:
    installed = installed_megatron_core()
    if installed is None or installed == recorded or (installed, recorded) in _VERSION_WARNED:
        return
    _VERSION_WARNED.add((installed, recorded))
    warnings.warn(f"megatron-core {installed} is installed; mindspeed_llm's patches are written against "
                  f"{recorded} and their signatures match this one, but bodies they track may differ: "
                  f"pip install megatron-core=={recorded}", MegatronCoreVersionWarning, stacklevel=3)


def _fix_for(target: str, recorded: str) -> str:
    if target.startswith(("megatron.training", "megatron.legacy")):
        return (f"use a Megatron-LM clone at tag core_v{recorded} with pip install megatron-core=={recorded}")
    if target.startswith("torch"):
        import torch

        return (f"installed torch is {torch.__version__}: install torch==2.13.0 (make install), "
                f"whose {target} has the expected parameters")
    return f"pip install megatron-core=={recorded}"


@dataclass
class Patch:
    """One registered change: ``target`` becomes ``replacement`` (or ``wrapper(original)``).

    ``description`` says what is replaced and why (required). ``signature`` is the target's signature
    the patch was written against (:func:`signature_text`; for a class, its constructor's);
    ``relies_on`` maps other callables (``".member"`` of the target, or a dotted path) to theirs.
    ``megatron_core`` is the megatron-core version it was written against. ``scoped`` patches are
    applied only by :meth:`PatchRegistry.scoped`.
    """

    target: str
    replacement: Any = None
    wrapper: Callable[[Any], Any] | None = None
    group: str = "base"
    description: str = ""
    signature: str | None = None
    relies_on: Mapping[str, str] = field(default_factory=dict)
    megatron_core: str = MEGATRON_CORE_VERSION
    scoped: bool = False
    # Modules (by name prefix) searched for `from module import name` copies to rebind.
    rebind_prefixes: tuple[str, ...] = ("megatron", "mindspeed_llm")
    _original: Any = field(default=_MISSING, repr=False)
    _new: Any = field(default=_MISSING, repr=False)
    _replaced: Any = field(default=_MISSING, repr=False)
    _rebound: list[tuple[Any, str]] = field(default_factory=list, repr=False)
    _owner: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.replacement is None) == (self.wrapper is None):
            raise ValueError(f"patch {self.target!r}: give exactly one of replacement= or wrapper=")
        if not self.description.strip():
            raise ValueError(f"patch {self.target!r}: description= must say what it replaces and why")

    @property
    def active(self) -> bool:
        return self._new is not _MISSING

    @property
    def how(self) -> str:
        return "wraps" if self.wrapper is not None else "replaces"

    def _current(self) -> tuple[Any, str, Any]:
        """(owner, attribute, the value there now: ``_INHERITED`` for a class attribute it inherits)."""
        owner, attr = resolve_owner(self.target)
        if isinstance(owner, type):
            original = owner.__dict__.get(attr, _MISSING)
            if original is _MISSING and hasattr(owner, attr):
                original = _INHERITED  # inherited: patched on this class; revert deletes it again
        else:
            original = getattr(owner, attr, _MISSING)
        return owner, attr, original

    def mismatch(self) -> str | None:
        """None when the installed code has the recorded signatures, else the one-line error text."""
        if self.signature is None and not self.relies_on:
            return None
        if self.active:
            value = self._replaced  # what was there when it was applied, not our own new value
        else:
            owner, attr, original = self._current()
            value = getattr(owner, attr) if original is _INHERITED else original
        checks = [(self.target, value, self.signature)] if self.signature is not None else []
        for name, expected in self.relies_on.items():
            if name.startswith("."):
                path, obj = self.target + name, getattr(value, name[1:], _MISSING)
            else:
                path = name
                holder, leaf = resolve_owner(name)
                obj = getattr(holder, leaf, _MISSING)
            checks.append((path, obj, expected))
        for path, obj, expected in checks:
            ok, found = (False, "(no such attribute)") if obj is _MISSING else _matches(expected, obj)
            if not ok:
                installed = installed_megatron_core() or "(not imported)"
                what = "" if path == self.target else f" relies on {path}, which"
                return (f"patch [{self.group}] {self.target}{what} expects {expected} (written against "
                        f"megatron-core {self.megatron_core}) but found {found} (installed megatron-core "
                        f"{installed}): {_fix_for(path, self.megatron_core)}")
        return None

    def check(self) -> None:
        """Raise :class:`PatchSignatureError` if the installed code differs from what the patch expects."""
        error = self.mismatch()
        if error is not None:
            raise PatchSignatureError(error)

    def apply(self, *, checked: bool = False, rebind: bool = True) -> None:
        """Check the recorded signatures (unless the caller just did: ``checked``), then patch.

        ``rebind=False`` leaves the ``from x import f`` copies to the caller (the registry rebinds the
        copies of a whole group in one pass over the imported modules: :func:`rebind_copies`).
        """
        if self.active:
            return
        if not checked:
            self.check()
        if self.target.startswith("megatron"):
            _warn_on_other_version(self.megatron_core)
        owner, attr, original = self._current()
        base = getattr(owner, attr) if original is _INHERITED else original
        if self.wrapper is not None:
            if base is _MISSING:
                raise PatchError(f"patch [{self.group}] {self.target}: nothing there to wrap")
            new = self.wrapper(base)
        else:
            new = self.replacement
        setattr(owner, attr, new)
        self._original, self._new, self._replaced = original, new, base
        self._owner, self._rebound = owner, []
        if rebind:
            rebind_copies([self])

    @property
    def copies_to_rebind(self) -> bool:
        """Whether modules may hold ``from x import f`` copies of the original (a module's function/class)."""
        original = self._original
        return (self.active and original is not _MISSING and original is not _INHERITED
                and not isinstance(self._owner, type) and callable(original))

    def revert(self) -> None:
        if not self.active:
            return
        owner, attr = resolve_owner(self.target)
        if self._original is _INHERITED or self._original is _MISSING:
            if attr in getattr(owner, "__dict__", {}):
                delattr(owner, attr)
        else:
            setattr(owner, attr, self._original)
        for module, key in self._rebound:
            setattr(module, key, self._original)
        self._original, self._new, self._replaced, self._rebound = _MISSING, _MISSING, _MISSING, []
        self._owner = None


def rebind_copies(patches: list[Patch]) -> None:
    """Point every ``from x import f`` copy of the patches' originals at their new values, in one pass.

    Only modules whose names start with a patch's ``rebind_prefixes`` are searched, and only functions and
    classes are rebound (data is never copied by identity on purpose). A place that is itself the target
    of one of ``patches`` is left to that patch.
    """
    wanted: dict[int, Patch] = {}
    for patch in patches:
        if patch.copies_to_rebind:
            wanted.setdefault(id(patch._original), patch)  # one object under two targets: the first rebinds
    if not wanted:
        return
    targets = {(id(p._owner), p.target.rsplit(".", 1)[1]) for p in patches if p.active}
    prefixes = tuple({prefix for p in wanted.values() for prefix in p.rebind_prefixes})
    hits = []
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefixes) or not isinstance(module, types.ModuleType):
            continue
        for key, value in module.__dict__.items():
            patch = wanted.get(id(value))
            if (patch is not None and value is patch._original and module is not patch._owner
                    and name.startswith(patch.rebind_prefixes) and (id(module), key) not in targets):
                hits.append((module, key, patch))
    for module, key, patch in hits:
        setattr(module, key, patch._new)
        patch._rebound.append((module, key))


class _ThenLoader(importlib.abc.Loader):
    """Runs the module's own loader, then the hook's ``then``."""

    def __init__(self, loader, then: Callable[[types.ModuleType], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.then(module)


@dataclass
class ImportHook:
    """A patch on the import system: while active, a finder first on ``sys.meta_path`` acts on ``target``.

    ``then(module)`` runs right after ``target`` is executed by its own loader (at once on apply if it
    is already imported): for patches on a package that is imported later, or never. ``stand_in`` (a
    file path) is executed as ``target`` instead of the real module while ``stand_in_when()`` is True.
    ``revert()`` removes the finder and a stand-in module it served from ``sys.modules``; modules that
    imported names from the stand-in keep them.
    """

    target: str
    group: str
    description: str
    then: Callable[[types.ModuleType], None] | None = None
    stand_in: str | None = None
    stand_in_when: Callable[[], bool] = lambda: True
    megatron_core: str = MEGATRON_CORE_VERSION
    scoped: bool = False
    _finder: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.then is None) == (self.stand_in is None):
            raise ValueError(f"import hook {self.target!r}: give exactly one of then= or stand_in=")
        if not self.description.strip():
            raise ValueError(f"import hook {self.target!r}: description= must say what it does and why")

    @property
    def active(self) -> bool:
        return self._finder is not None

    @property
    def how(self) -> str:
        return "stands in for" if self.stand_in is not None else "hooks the import of"

    def mismatch(self) -> str | None:
        return None  # nothing of megatron-core is called through it

    def check(self) -> None:
        """Nothing to check: an import hook has no signature."""

    def find_spec(self, name: str, path=None, target=None):
        """The finder's answer: the stand-in's spec, or the module's own spec with ``then`` after it."""
        if name != self.target:
            return None
        if self.stand_in is not None:
            if not self.stand_in_when():
                return None
            return importlib.util.spec_from_file_location(name, self.stand_in)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec

    def apply(self, *, checked: bool = False, rebind: bool = True) -> None:
        """Put the finder first on ``sys.meta_path`` (nothing to check or rebind: keywords as Patch's)."""
        if self.active:
            return
        self._finder = _Finder(self)
        sys.meta_path.insert(0, self._finder)
        module = sys.modules.get(self.target)
        if self.then is not None and module is not None:
            self.then(module)

    def revert(self) -> None:
        if not self.active:
            return
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._finder = None
        module = sys.modules.get(self.target)
        served = module is not None and getattr(module, "__file__", None) == self.stand_in
        if self.stand_in is not None and served:
            del sys.modules[self.target]
            parent, _, leaf = self.target.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], leaf, None) is module:
                delattr(sys.modules[parent], leaf)


class _Finder(importlib.abc.MetaPathFinder):
    """The object on ``sys.meta_path`` for one :class:`ImportHook` (removed again by its revert)."""

    def __init__(self, hook: ImportHook) -> None:
        self.hook = hook

    def find_spec(self, name: str, path=None, target=None):
        return self.hook.find_spec(name, path, target)


AnyPatch = Patch | ImportHook


class PatchRegistry:
    """An ordered set of patches, applied and reverted as groups."""

    def __init__(self) -> None:
        self._patches: dict[str, AnyPatch] = {}
        self.device: str | None = None

    def add(self, patch: AnyPatch) -> AnyPatch:
        """Register (not apply) ``patch``; the same target and group again replaces an inactive one."""
        key = f"{patch.group}:{patch.target}"
        if key in self._patches and self._patches[key].active:
            raise RuntimeError(f"patch {patch.target!r} in group {patch.group!r} is active: "
                               "revert it before re-registering")
        self._patches[key] = patch
        return patch

    def register(
        self,
        target: str,
        replacement: Any = None,
        *,
        wrapper: Callable[[Any], Any] | None = None,
        group: str = "base",
        description: str,
        signature: str | None = None,
        relies_on: Mapping[str, str] | None = None,
        scoped: bool = False,
    ) -> Patch:
        """Register (not apply) a :class:`Patch`; ``description`` says what it replaces and why."""
        patch = Patch(target, replacement, wrapper, group, description, signature, dict(relies_on or {}),
                      scoped=scoped)
        self.add(patch)
        return patch

    def register_import_hook(self, target: str, *, group: str, description: str,
                             then: Callable[[types.ModuleType], None] | None = None,
                             stand_in: str | None = None,
                             stand_in_when: Callable[[], bool] | None = None) -> ImportHook:
        """Register (not apply) an :class:`ImportHook` on module ``target``."""
        hook = ImportHook(target, group, description, then, stand_in, stand_in_when or (lambda: True))
        self.add(hook)
        return hook

    def patches(self, group: str | None = None) -> list[AnyPatch]:
        return [p for p in self._patches.values() if group is None or p.group == group]

    def apply(self, group: str | None = None) -> None:
        """Apply the registered patches of ``group`` (all when None), scoped ones excepted.

        Every signature is checked first: on a mismatch none of them is applied.
        """
        self._apply([p for p in self.patches(group) if not p.scoped and not p.active])

    def _apply(self, pending: list[AnyPatch]) -> None:
        errors = [error for error in (p.mismatch() for p in pending) if error is not None]
        if errors:
            more = f" (and {len(errors) - 1} more mismatched patch(es))" if len(errors) > 1 else ""
            raise PatchSignatureError(errors[0] + more)
        for patch in pending:
            patch.apply(checked=True, rebind=False)
        rebind_copies([p for p in pending if isinstance(p, Patch)])

    @contextlib.contextmanager
    def scoped(self, group: str) -> Iterator[None]:
        """Apply ``group`` (scoped patches included) inside a ``with`` block; revert what it applied after."""
        pending = [p for p in self.patches(group) if not p.active]
        self._apply(pending)
        try:
            yield
        finally:
            for patch in reversed(pending):
                patch.revert()

    def scoped_registered(self, group: str, register: Callable[[PatchRegistry], None]
                          ) -> contextlib.AbstractContextManager:
        """:meth:`scoped` of ``group``, registered first by ``register(self)`` when it has no patches yet."""
        if not self.patches(group):
            register(self)
        return self.scoped(group)

    def revert(self, group: str | None = None) -> None:
        """Undo patches in reverse order of registration, restoring the originals exactly."""
        for patch in reversed(self.patches(group)):
            patch.revert()

    def unregister(self, group: str) -> None:
        """Revert and forget every patch of ``group`` (for groups rebuilt with new choices each time)."""
        self.revert(group)
        for key in [key for key, patch in self._patches.items() if patch.group == group]:
            del self._patches[key]

    def is_active(self, target: str, group: str | None = None) -> bool:
        return any(p.active and p.target == target for p in self.patches(group))

    def describe(self) -> str:
        """A human-readable list of the device and every active patch, for logs and bug reports."""
        installed = installed_megatron_core() or "not imported"
        lines = [f"mindspeed_llm patches (device: {self.device or 'undetected'}; written against "
                 f"megatron-core {MEGATRON_CORE_VERSION}, installed {installed})"]
        active = [p for p in self._patches.values() if p.active]
        if not active:
            lines.append("  (none active)")
        for patch in active:
            lines.append(f"  [{patch.group}] {patch.how} {patch.target} - {patch.description}")
        for patch in self._patches.values():
            if patch.scoped and not patch.active:
                lines.append(f"  [{patch.group}] scoped, inside registry.scoped({patch.group!r}) only: "
                             f"{patch.how} {patch.target} - {patch.description}")
        return "\n".join(lines)


registry = PatchRegistry()
