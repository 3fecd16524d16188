"""The patch registry: explicit, reversible replacement of attributes by dotted path.

A patch names its target (``package.module.Owner.attr``), the replacement, and whether it
replaces the original or wraps it (the wrapper factory receives the original). ``apply()`` sets
the new value on the owner and also rebinds every already-imported module that copied the
original with ``from x import f``; ``revert()`` restores all of it exactly. Applying an active
patch again does nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


def resolve_owner(target: str) -> tuple[Any, str]:
    """Return ``(owner, attribute)`` for a dotted path, importing the longest module prefix."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ImportError(f"patch target {target!r}: no importable module prefix")


@dataclass
class Patch:
    """One registered change: ``target`` becomes ``replacement`` (or ``wrapper(original)``)."""

    target: str
    replacement: Any = None
    wrapper: Callable[[Any], Any] | None = None
    group: str = "base"
    description: str = ""
    # Modules (by name prefix) searched for `from module import name` copies to rebind.
    rebind_prefixes: tuple[str, ...] = ("megatron", "mindspeed_llm")
    _original: Any = field(default=_MISSING, repr=False)
    _new: Any = field(default=_MISSING, repr=False)
    _rebound: list[tuple[Any, str]] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return self._new is not _MISSING

    def apply(self) -> None:
        if self.active:
            return
        owner, attr = resolve_owner(self.target)
        original = owner.__dict__.get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr, _MISSING)
        if original is _MISSING and isinstance(owner, type):
            # Inherited attribute: patch on this class; revert deletes it again.
            original = _INHERITED
        if self.wrapper is not None:
            base = getattr(owner, attr) if original is _INHERITED else original
            new = self.wrapper(base)
        else:
            new = self.replacement
        setattr(owner, attr, new)
        self._original, self._new = original, new
        self._rebound = []
        if original not in (_MISSING, _INHERITED) and not isinstance(owner, type):
            self._rebind(original, new, owner, attr)

    def _rebind(self, original: Any, new: Any, owner: Any, attr: str) -> None:
        if not callable(original):
            return  # only functions and classes are copied by `from x import f`; never rebind data
        for name, module in list(sys.modules.items()):
            if module is None or module is owner or not isinstance(module, types.ModuleType):
                continue
            if not name.startswith(self.rebind_prefixes):
                continue
            namespace = getattr(module, "__dict__", {})
            for key, value in list(namespace.items()):
                if value is original:
                    setattr(module, key, new)
                    self._rebound.append((module, key))

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
        self._original, self._new, self._rebound = _MISSING, _MISSING, []


_INHERITED = object()


class PatchRegistry:
    """An ordered set of patches, applied and reverted as groups."""

    def __init__(self) -> None:
        self._patches: dict[str, Patch] = {}
        self.device: str | None = None

    def register(
        self,
        target: str,
        replacement: Any = None,
        *,
        wrapper: Callable[[Any], Any] | None = None,
        group: str = "base",
        description: str = "",
    ) -> Patch:
        """Register (not apply) a patch; registering the same target and group again replaces it."""
        if (replacement is None) == (wrapper is None):
            raise ValueError(f"patch {target!r}: give exactly one of replacement= or wrapper=")
        key = f"{group}:{target}"
        if key in self._patches and self._patches[key].active:
            raise RuntimeError(f"patch {target!r} in group {group!r} is active: revert it before re-registering")
        patch = Patch(target, replacement, wrapper, group, description)
        self._patches[key] = patch
        return patch

    def patches(self, group: str | None = None) -> list[Patch]:
        return [p for p in self._patches.values() if group is None or p.group == group]

    def apply(self, group: str | None = None) -> None:
        """Apply the registered patches of ``group`` (all when None); already active ones are skipped."""
        for patch in self.patches(group):
            patch.apply()

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
        lines = [f"mindspeed_llm patches (device: {self.device or 'undetected'})"]
        active = [p for p in self._patches.values() if p.active]
        if not active:
            lines.append("  (none active)")
        for patch in active:
            how = "wraps" if patch.wrapper is not None else "replaces"
            extra = f" - {patch.description}" if patch.description else ""
            lines.append(f"  [{patch.group}] {how} {patch.target}{extra}")
        return "\n".join(lines)


registry = PatchRegistry()
