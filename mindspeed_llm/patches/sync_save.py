"""A scoped patch: a synchronous torch_dist save reads its write results in its own process (``sync-save``).

megatron-core 0.16.1's ``FileSystemWriterAsync`` hands its write results to the caller through
``filesystem_async._get_write_results_queue()``, which on first use starts a spawn-context
``multiprocessing.Manager``: a new interpreter that imports torch and re-runs the entry script's imports
(about 7.5 CPU s per rank, measured, and a process that stays for the whole run). The queue crosses
processes only for ``--async-save``, where the write runs in another process. Our saves are synchronous
(:mod:`mindspeed_llm.runtime.checkpoint.dist_format`): the write results are put and read by the saving
process itself, so inside :func:`in_process_write_results` the writer gets a plain ``queue.Queue``.
Scoped: Megatron-LM's own ``--async-save`` (the drop-in) still gets megatron-core's Manager queue.
"""

from __future__ import annotations

import contextlib
import queue

from mindspeed_llm.patches.registry import PatchRegistry, registry

GROUP = "sync-save"
TARGET = "megatron.core.dist_checkpointing.strategies.filesystem_async._get_write_results_queue"


def _in_process_queue() -> queue.Queue:
    """``_get_write_results_queue`` inside :func:`in_process_write_results`: a queue of this process."""
    return queue.Queue()


def register_sync_save_patch(reg: PatchRegistry) -> None:
    """Register (not apply) the scoped patch of group ``sync-save``."""
    reg.register(TARGET, _in_process_queue, group=GROUP, scoped=True, signature="()",
                 description="a synchronous torch_dist save reads its write results from a queue of its own "
                             "process (megatron-core starts a spawn-context Manager process for it)")


def in_process_write_results(reg: PatchRegistry = registry) -> contextlib.AbstractContextManager:
    """A ``with`` block around a synchronous ``dist_checkpointing.save``: no Manager process is started."""
    return reg.scoped_registered(GROUP, register_sync_save_patch)
