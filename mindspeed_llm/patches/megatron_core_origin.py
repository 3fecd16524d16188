"""Which megatron-core a process imports: the installed, pinned wheel, not a Megatron-LM clone's copy.

Python puts a script's folder first on ``sys.path``. A script run inside a Megatron-LM clone (its own
``pretrain_gpt.py`` with ``import mindspeed_llm`` added), or a clone root on ``PYTHONPATH``, makes
``import megatron.core`` load the clone's ``megatron/core`` instead of the installed megatron-core that
the patches are written and checked against; start-up then dies far away (``compile_helpers`` runs
``make`` for a dataset helper the wheel ships built: ``pybind11/pybind11.h: No such file``).
:func:`check_megatron_core_origin` finds this before megatron-core is imported and stops with one line
that names both folders and the fix.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

DISTRIBUTION = "megatron-core"
DOCS = "docs/training.md#megatron-lms-own-scripts"


class MegatronCoreShadowedError(SystemExit):
    """megatron.core comes from another folder than the installed megatron-core (exits with one line)."""


def installed_megatron_core() -> str | None:
    """The folder of the installed megatron-core's ``megatron/core``; None when it is not installed as
    files (not installed, or an editable install, which is whatever the user pointed it at)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    init = dist.locate_file("megatron/core/__init__.py")
    return os.path.dirname(os.path.realpath(init)) if os.path.isfile(init) else None


def imported_megatron_core() -> str | None:
    """The folder ``import megatron.core`` loads (or has loaded) in this process."""
    module = sys.modules.get("megatron.core")
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec("megatron.core")
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    return os.path.dirname(os.path.realpath(origin)) if origin else None


def shadowed_message(found: str, installed: str) -> str:
    """The one line for a megatron.core from ``found`` where the installed one is in ``installed``."""
    clone = os.path.dirname(os.path.dirname(found))
    return (
        f"error: megatron.core would come from {found}, not from the installed megatron-core in {installed}: "
        f"{clone} is on sys.path before it (Python puts the running script's folder first; or PYTHONPATH "
        "names it). Run with PYTHONSAFEPATH=1 and put only the overlay folder on PYTHONPATH, never a "
        f"Megatron-LM clone's root (the commands: {DOCS})"
    )


def check_megatron_core_origin() -> None:
    """Stop with one line when megatron.core is not the installed megatron-core (a clone shadows it)."""
    installed = installed_megatron_core()
    if installed is None:
        return
    found = imported_megatron_core()
    if found is not None and found != installed:
        raise MegatronCoreShadowedError(shadowed_message(found, installed))
