"""LoRA, one feature in one package (docs/lora.md).

- ``config``: the ``--lora-*`` flags of every command line (:func:`add_lora_flags`, :func:`check_lora_flags`)
  and :class:`LoraConfig`, the one type carrying the settings (torch-free)
- ``keys``: where adapter tensors sit in a state dict; the checkpoint key filter (torch-free)
- ``tp``: the one tensor-parallel rule for A and B, used by the layers and by conversion
- ``layers``: the adapted megatron-core linear layers; :func:`apply_lora` (adapt + freeze)
- ``adapter``: a whole adapter and its tensors in Megatron checkpoints
- ``peft``: peft adapter folders <-> megatron's fused adapter; ``merge``: merged weights (peft's merge)
- ``checkpoint``: what a checkpoint holds of an adapter and how a launch continues it (``--lora-load``,
  ``--lora-ckpt-filter``, the resume checks); the checkpoint interface asks it

The names below are imported on first use, so the command lines read ``config`` without torch.
The package imports nothing else of mindspeed_llm but the TP layout (``models/tp_split.py``, in ``tp``)
and ``runtime/checkpoint``'s file layout (in ``checkpoint``): training, inference, conversion and
checkpointing ask it.
"""

import importlib

_EXPORTS = {
    "LoraConfig": "config", "LoraError": "config", "add_lora_flags": "config", "check_lora_flags": "config",
    "TARGET_MODULES": "keys", "LORA_MODULES": "keys", "is_lora_key": "keys", "lora_state_dict": "keys",
    "without_lora": "keys", "holds_adapter": "keys", "holds_only_adapter": "keys",
    "shard_adapter": "tp", "unshard_adapter": "tp",
    "apply_lora": "layers",
    "Adapter": "adapter", "AdapterCollector": "adapter", "FusedRows": "adapter",
    "read_peft_adapter": "peft", "write_peft_adapter": "peft",
    "MergedSource": "merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` (see ``_EXPORTS``)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
