"""What a checkpoint holds of a LoRA adapter, and how a launch continues it (docs/lora.md).

The checkpoint interface (``runtime/checkpoint``) asks this module and holds no LoRA rule itself:

- saving: :func:`saved_weights`, the adapter-only key filter of ``--lora-ckpt-filter``;
- loading: :func:`adapter_iteration` and :func:`adapter_source`, which iteration and rank file
  ``--lora-load`` means (the run's optimizer, scheduler, RNG and iteration come from it; ``--load`` gives the
  base weights only); :func:`weights_with_adapter`, the base weights merged with the adapter's tensors, and
  the resume checks (an adapter-only ``--load``, an adapter of another ``--lora-alpha``, a ``--lora-load``
  that holds no adapter).

The record's LoRA section is :class:`~mindspeed_llm.lora.config.LoraConfig` itself (``record.lora``).
The files are read through ``runtime/checkpoint``'s layout; that package imports this module, never the
other way round at its top (no import circle).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from mindspeed_llm.lora.config import LoraConfig
from mindspeed_llm.lora.keys import is_lora_key, lora_state_dict
from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.checkpoint.locate import same_folder
from mindspeed_llm.runtime.checkpoint.record import read_header
from mindspeed_llm.runtime.checkpoint.weights import chunk_state, unwrap


# ---- save ----------------------------------------------------------------------------------------------
def saved_weights(model_state: dict, lora: LoraConfig | None) -> dict:
    """The ``model`` (``model0..``) entries a save writes: the adapter tensors alone with
    ``--lora-ckpt-filter``."""
    if lora is None or not lora.ckpt_filter:
        return model_state
    return {key: lora_state_dict(sd) for key, sd in model_state.items()}


# ---- which adapter checkpoint --------------------------------------------------------------------------
def adapter_iteration(args: argparse.Namespace) -> int | str | None:
    """--lora-load's tracker iteration; None for a fresh adapter (only when --lora-load == --save and no
    tracker is there yet)."""
    lora_load = getattr(args, "lora_load", None)
    if not lora_load:
        return None
    if os.path.isfile(os.path.join(lora_load, layout.TRACKER_FILENAME)):
        return layout.read_tracker(lora_load)
    if same_folder(lora_load, args.save):
        return None
    raise CheckpointError(f"--lora-load {lora_load}: no {layout.TRACKER_FILENAME} there: give the --save "
                          "folder of a LoRA run (or the same folder as --save to start a new adapter and "
                          "resume it later)")


@dataclass(frozen=True)
class AdapterSource:
    """This rank's file of ``--lora-load``, or a fresh adapter (``--lora-load`` == ``--save``: none yet).

    With ``--lora-load``, ``--load`` gives the base weights only; the run's state (optimizer, scheduler, RNG,
    iteration) is the adapter checkpoint's, and a fresh adapter starts at iteration 0 with a fresh optimizer.
    """

    path: str | None = None
    state: dict | None = None
    iteration: int | str | None = None

    @property
    def fresh(self) -> bool:
        """True when no adapter checkpoint exists yet: the run starts at iteration 0 from --load's weights."""
        return self.path is None


def adapter_source(args: argparse.Namespace, tp_rank: int, pp_rank: int, pp_size: int, *, ep_rank: int = 0,
                   ep_size: int = 1) -> AdapterSource | None:
    """What ``--lora-load`` gives this (TP, PP, EP) rank; None without LoRA or without ``--lora-load``.
    (At EP > 1 every EP rank saved its own file, Megatron-LM's ``mp_rank_TT[_PPP]_EEE``.)"""
    if not getattr(args, "lora_target_modules", None) or not getattr(args, "lora_load", None):
        return None
    iteration = adapter_iteration(args)
    if iteration is None:
        return AdapterSource()
    path = layout.checkpoint_file_for(args.lora_load, iteration, tp_rank, pp_rank, pp_size, ep_rank, ep_size)
    if not os.path.isfile(path):
        ep_part = f", EP rank {ep_rank}" if ep_size > 1 else ""
        raise CheckpointError(f"{path} not found: the adapter checkpoint in {args.lora_load} is "
                              f"incomplete for TP rank {tp_rank}, PP rank {pp_rank}{ep_part} (or was saved "
                              "at another TP/PP/EP)")
    state = layout.load_rank_file(path, mmap=False)
    read_header(state, path)  # a record this version cannot read is refused before anything loads
    return AdapterSource(path=path, state=state, iteration=iteration)


# ---- load: base + adapter weights ----------------------------------------------------------------------
def weights_with_adapter(lora: LoraConfig | None, chunk, weights: dict, base: tuple[str, dict],
                         adapter: AdapterSource | None, key: str, n_chunks: int) -> dict:
    """The weights to load into one model chunk: ``weights`` (``--load``'s, from the file ``base`` = (path,
    state)) as they are without LoRA; with LoRA the base tensors plus the adapter's, after the resume checks.

    The adapter comes from --lora-load's file, else from --load's own file when it holds one (a full
    LoRA checkpoint), else it keeps its initial values (a base checkpoint: the adapter starts fresh).
    """
    if lora is None:
        if isinstance(weights, dict) and weights and all(is_lora_key(k) or k.endswith("_extra_state")
                                                         for k in weights):
            raise CheckpointError(f"{base[0]} holds only LoRA adapter tensors (--lora-ckpt-filter):"
                                  " pass the base model's checkpoint as --load, this folder as --lora-load "
                                  "and the adapter's --lora-r/--lora-alpha/--lora-target-modules")
        return weights
    path = base[0]
    source = (adapter.path, adapter.state) if adapter is not None and not adapter.fresh else None
    merged = _with_adapter(chunk, weights, path, source, key, n_chunks)
    check_alpha(lora, source or base)
    return merged


def _with_adapter(chunk, weights: dict, path: str, adapter: tuple[str, dict] | None, key: str,
                  n_chunks: int) -> dict:
    """--load's base tensors plus the adapter's (``adapter``: --lora-load's (path, state), if any)."""
    if not isinstance(weights, dict):
        return weights  # load_weights names the problem
    base = {k: v for k, v in weights.items() if not is_lora_key(k)}
    if weights and not any(k.endswith(".weight") for k in base):
        raise CheckpointError(f"{path} holds only LoRA adapter tensors (saved with --lora-ckpt-filter): pass "
                              "the base model's checkpoint as --load and this folder as --lora-load")
    if adapter is not None:
        lora_path, lora_state = adapter
        lora = chunk_state(lora_state, lora_path, key, n_chunks)
        lora = {k: v for k, v in lora.items() if is_lora_key(k)} if isinstance(lora, dict) else {}
        if not lora:
            raise CheckpointError(f"{lora_path} holds no LoRA adapter tensors: --lora-load must be the "
                                  "--save folder of a LoRA run (--lora-target-modules)")
        check_adapter_fits_chunk(chunk, lora, lora_path)
        return {**base, **lora}
    if len(base) < len(weights):
        return weights  # a full LoRA checkpoint: loaded strictly, adapter included
    own = {k: v for k, v in unwrap(chunk).state_dict().items() if is_lora_key(k)}
    return {**base, **own}


def check_adapter_fits_chunk(chunk, lora: dict, lora_path: str) -> None:
    """--lora-load's adapter tensors against this launch's adapted layers (--lora-r, --lora-target-modules):
    the line names --lora-load's file, not --load's."""
    own = {k: v for k, v in unwrap(chunk).state_dict().items() if is_lora_key(k)}
    missing, extra = sorted(set(own) - set(lora)), sorted(set(lora) - set(own))
    if missing or extra:
        key, what = (missing[0], "lacks") if missing else (extra[0], "holds")
        raise CheckpointError(f"{lora_path} {what} {key}: its adapter was trained on other layers than this "
                              "launch's --lora-target-modules; pass the adapter's --lora-target-modules")
    for key, tensor in sorted(lora.items()):
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{lora_path}: {key} has shape {list(tensor.shape)}, this launch's layer "
                                  f"needs {list(own[key].shape)}: pass the adapter's --lora-r (or the base "
                                  "it was trained on as --load)")


def check_alpha(lora: LoraConfig, source: tuple[str, dict]) -> None:
    """An adapter trained with another --lora-alpha would load and silently scale differently: refuse it."""
    path, state = source
    recorded = getattr(state.get("args"), "lora_alpha", None)
    holds_adapter = any(is_lora_key(k) for name, sd in state.items()
                        if name.startswith("model") and isinstance(sd, dict) for k in sd)
    if holds_adapter and recorded is not None and float(recorded) != float(lora.alpha):
        raise CheckpointError(f"{path} holds an adapter trained with --lora-alpha {recorded:g}, this launch "
                              f"has --lora-alpha {lora.alpha:g}: pass --lora-alpha {recorded:g}")
