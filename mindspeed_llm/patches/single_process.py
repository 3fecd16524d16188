"""A scoped patch: megatron-core's dataset code run as if this process were alone (group ``single-process``).

``BlendedMegatronDatasetBuilder`` and ``GPTDataset`` (megatron-core 0.16.1) write their index cache only
on global rank 0 and otherwise enter collectives; a node leader without shared storage
(``--no-shared-storage``) must write its own cache while the other ranks wait elsewhere. Inside
:func:`as_single_process` ``torch.distributed.is_initialized()`` answers False, so the builder neither
enters a collective nor skips the write. A scoped patch (not a base one): only that one call may see
it, and it is reverted when the ``with`` block ends, error or not.
"""

from __future__ import annotations

import contextlib

from mindspeed_llm.patches.registry import PatchRegistry, registry

GROUP = "single-process"
TARGET = "torch.distributed.is_initialized"


def _not_initialized() -> bool:
    """``torch.distributed.is_initialized`` inside :func:`as_single_process`: no process group here."""
    return False


def register_single_process_patch(reg: PatchRegistry) -> None:
    """Register (not apply) the scoped patch of group ``single-process``."""
    reg.register(TARGET, _not_initialized, group=GROUP, scoped=True, signature="()",
                 description="answers False while megatron-core's dataset builder writes this rank's index "
                             "cache alone (--no-shared-storage node leaders)")


def as_single_process(reg: PatchRegistry = registry) -> contextlib.AbstractContextManager:
    """A ``with`` block in which ``torch.distributed.is_initialized()`` answers False (reverted after)."""
    return reg.scoped_registered(GROUP, register_single_process_patch)
