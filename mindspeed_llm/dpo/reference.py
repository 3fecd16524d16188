"""The reference model of DPO's losses: frozen chunks of the same layout, or the LoRA base with the adapters
off.

Which weights (:func:`build_reference`, once before the first step, every rank together):

- ``--ref-model CKPT``: iteration ``--refer-model-iter`` of that checkpoint if it holds it, else the one its
  tracker names (torch format, this launch's TP/PP layout, the same model: anything else is one line);
- otherwise the weights the run starts from: when ``--load`` gave the run its starting weights
  (``--finetune``, a converted checkpoint at iteration ``--refer-model-iter``, or nothing loaded) a copy of
  the policy before its first step; when the run resumes a later iteration, iteration
  ``--refer-model-iter`` of ``--load`` (MindSpeed-LLM's rule), and if ``--load`` does not hold it, an
  error asking for ``--ref-model``;
- with LoRA (``--lora-target-modules``): no second model. The reference forward runs the policy's own
  chunks with every adapter's scaling set to 0 (the base layer's output exactly), under ``no_grad``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import torch

from mindspeed_llm.runtime.checkpoint.errors import CheckpointError


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module


def below_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps (Float16Module with bf16, else the GPTModel): called without DDP's hooks."""
    from megatron.core.distributed import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


@contextlib.contextmanager
def adapters_off(chunk: torch.nn.Module) -> Iterator[None]:
    """The LoRA layers of ``chunk`` add nothing (scaling 0) inside the block: the base model's outputs."""
    saved = [(m, m.lora_scaling) for m in chunk.modules() if hasattr(m, "lora_scaling")]
    try:
        for m, _ in saved:
            m.lora_scaling = 0.0
        yield
    finally:
        for m, scaling in saved:
            m.lora_scaling = scaling


class Reference:
    """The reference forward of one micro-batch on this rank's chunk: frozen chunks or adapters off."""

    def __init__(self, chunks: list[torch.nn.Module] | None, source: str) -> None:
        self.chunks = chunks  # None: the policy's chunks with the adapters off
        self.source = source

    def forward(self, policy_chunk: torch.nn.Module, index: int, *inputs, input_tensor=None, **kwargs):
        """The reference's output for ``inputs`` (``input_tensor``: received activations, later stages)."""
        with torch.no_grad():
            if self.chunks is None:
                target = below_ddp(policy_chunk)
                with adapters_off(target):
                    if input_tensor is not None:
                        unwrap(target).set_input_tensor(input_tensor)
                    return target(*inputs, **kwargs)
            target = self.chunks[index]
            if input_tensor is not None:
                unwrap(target).set_input_tensor(input_tensor)
            return target(*inputs, **kwargs)


def _frozen_chunks(model_provider: Callable, args: argparse.Namespace) -> list[torch.nn.Module]:
    """This rank's chunk of the model, once more, frozen (Float16Module with bf16, as the policy)."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.module import Float16Module

    chunk = model_provider(
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(), vp_stage=None
    )
    for p in chunk.parameters():
        p.requires_grad_(False)
    if args.bf16:
        chunk = Float16Module(chunk.config, chunk)
    return [chunk.eval()]


def _load_weights(chunk: torch.nn.Module, root: str, iteration, args: argparse.Namespace, what: str) -> None:
    """The torch-format checkpoint ``root`` at ``iteration`` into ``chunk`` (strict); one line if it does not
    fit."""
    from megatron.core import parallel_state as ps

    from mindspeed_llm.runtime.checkpoint import layout
    from mindspeed_llm.runtime.checkpoint.detect import TORCH, detect_format

    fmt = detect_format(root, iteration)
    if fmt != TORCH:
        raise CheckpointError(
            f"{what} {root}: iteration {iteration} is not a torch-format checkpoint "
            "(convert_ckpt.py's or --ckpt-format torch): convert it with convert_ckpt.py"
        )
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    found = layout.parallel_sizes(root, iteration)
    if found != (tp, pp):
        raise CheckpointError(
            f"{what} {root}: a TP{found[0]} PP{found[1]} checkpoint, this launch is TP{tp} "
            f"PP{pp}: convert it to this layout (convert_ckpt.py --target-tensor-parallel-size "
            f"{tp} --target-pipeline-parallel-size {pp})"
        )
    state = layout.load_rank_state(
        root,
        iteration,
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(),
        pp,
        mmap=False,
    )
    weights = state.get("model")
    if weights is None:
        raise CheckpointError(f"{what} {root}: iteration {iteration} holds no model weights")
    try:
        unwrap(chunk).load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:240]
        raise CheckpointError(
            f"{what} {root} is another model than the one trained ({detail}): give a "
            "checkpoint of the same model (sizes, layers, vocabulary)"
        ) from None


def _has_iteration(root: str, iteration: int) -> bool:
    import os

    from mindspeed_llm.runtime.checkpoint import layout

    return os.path.isdir(layout.iteration_dir(root, iteration))


def build_reference(
    model: list, model_provider: Callable, args: argparse.Namespace, cfg, loaded_iteration: int
) -> Reference | None:
    """The run's reference (None for the reference-free losses); every rank calls it (failures together)."""
    from mindspeed_llm.runtime.checkpoint import layout
    from mindspeed_llm.runtime.errors import fail_together

    if not cfg.needs_reference:
        return None
    if getattr(args, "lora_target_modules", None):
        return Reference(None, "the base model with the LoRA adapters off (no second copy)")
    with fail_together():
        chunks = _frozen_chunks(model_provider, args)
        it = cfg.refer_model_iter
        if cfg.ref_model:
            iteration = it if _has_iteration(cfg.ref_model, it) else layout.read_tracker(cfg.ref_model)
            _load_weights(chunks[0], cfg.ref_model, iteration, args, "--ref-model")
            source = f"--ref-model {cfg.ref_model} at iteration {iteration}"
        elif args.finetune or loaded_iteration in (0, it) or not args.load:
            unwrap(chunks[0]).load_state_dict(unwrap(model[0]).state_dict(), strict=True)
            source = "the starting weights" + (f" (--load {args.load})" if args.load else "")
        elif _has_iteration(args.load, it):
            _load_weights(chunks[0], args.load, it, args, "--load (the reference, --refer-model-iter)")
            source = f"--load {args.load} at iteration {it} (--refer-model-iter)"
        else:
            raise CheckpointError(
                f"--load {args.load} resumes iteration {loaded_iteration}, and the reference (the starting "
                f"weights, iteration {it}, --refer-model-iter) is not there: give --ref-model with the "
                "checkpoint the run started from"
            )
    return Reference(chunks, source)
