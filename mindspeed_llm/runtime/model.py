"""The run's model: its config settled against the tokenizer and the ``--load`` checkpoint, and its chunks.

:func:`plan_run` checks the launch against what the checkpoint records, settles the padded vocabulary
and our ``ModelConfig`` (the checkpoint's HF settings completed by the flags), and builds the run's
plan (``config/plan.py``); :func:`get_model` builds this rank's model chunks from the entry script's
model provider. Training and inference both start here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.config.groups import RunConfig, ddp_config
from mindspeed_llm.config.plan import RunPlan
from mindspeed_llm.runtime import run


def padded_vocab_size(vocab: int, args: argparse.Namespace, recorded: int | None = None) -> int:
    """Megatron-LM's padding: up to a multiple of ``--make-vocab-size-divisible-by`` x TP.

    ``recorded``: the checkpoint's padded size, which the run takes instead of ``--padded-vocab-size``.
    """
    from mindspeed_llm.convert import mapping

    tp = args.tensor_model_parallel_size
    requested = recorded if recorded is not None else args.padded_vocab_size
    if requested is not None:
        if requested < vocab:
            raise ArgumentError(f"--padded-vocab-size {requested} is smaller than the tokenizer's "
                                f"{vocab} tokens: use at least {vocab}")
        if requested % tp:
            raise ArgumentError(f"--padded-vocab-size {requested} is not divisible by "
                                f"--tensor-model-parallel-size {tp}")
    return mapping.padded_vocab_size(vocab, tp, args.make_vocab_size_divisible_by, requested)


def settle_model_config(
    args: argparse.Namespace, config: RunConfig, tokenizer, ckpt_iteration
) -> tuple[Any, int]:
    """(our ModelConfig, padded vocabulary) of the launch, checked against ``--load``'s checkpoint when there
    is one."""
    from mindspeed_llm.models.families import ModelConfig, UnsupportedModelError
    from mindspeed_llm.runtime.checkpoint import launch as checkpoint_launch
    from mindspeed_llm.runtime.checkpoint.detect import TORCH_DIST, detect_format
    from mindspeed_llm.runtime.checkpoint.errors import CheckpointError

    base, rows, recorded = None, None, None
    if ckpt_iteration is not None:
        record, where = checkpoint_launch.read_checkpoint_record(args, ckpt_iteration)
        checkpoint_launch.check_checkpoint_args(
            args, record, where, reshardable=detect_format(args.load, ckpt_iteration) == TORCH_DIST
        )
        ckpt_args = record.model  # the recorded model: hf_config, hf_vocab_size, padded_vocab_size, ...
        recorded = checkpoint_launch.adopt_padded_vocab(args, ckpt_args, tokenizer.vocab_size, where)
        if getattr(ckpt_args, "hf_config", None):
            # the recorded HF settings (RoPE scaling, sliding window, ...) are the model's: refuse, never drop
            try:
                base = ModelConfig.from_hf_config(dict(ckpt_args.hf_config))
            except (UnsupportedModelError, KeyError, ValueError) as exc:
                raise CheckpointError(f"{where}: its recorded HF config is refused: {exc}") from None
        rows = getattr(ckpt_args, "hf_vocab_size", None)
    padded = padded_vocab_size(tokenizer.vocab_size, args, recorded)
    rows = min(rows or padded, padded)
    model_config = config.model.model_config(rows, config.precision.params_dtype, base)
    try:
        model_config.check_sequence_length(config.data.seq_length, "--seq-length")
    except UnsupportedModelError as exc:
        raise ArgumentError(str(exc)) from None
    if base is not None and "max_position_embeddings" not in run.launch_flags():
        # Not given: the launch's default (--seq-length) is no statement about the model; RoPE does
        # not read it, and mg->hf must write back the checkpoint's value.
        model_config = model_config.replace(max_position_embeddings=base.max_position_embeddings)
    return model_config, padded


def plan_run(
    args: argparse.Namespace, config: RunConfig, tokenizer, ckpt_iteration, model_type=None
) -> RunPlan:
    """Settle the model against ``--load`` and build the run's plan; the run's namespace then carries it.

    ``args`` is the namespace of the flags (``initialize_megatron``'s); afterwards ``run.get_args()`` answers
    the namespace of configuration and plan.
    """
    import torch

    import mindspeed_llm

    model_config, padded = settle_model_config(args, config, tokenizer, ckpt_iteration)
    plan = RunPlan.build(
        config,
        world_size=torch.distributed.get_world_size(),
        rank=torch.distributed.get_rank(),
        device=mindspeed_llm.DEVICE,
        model_config=model_config,
        padded_vocab_size=padded,
        model_type=model_type,
    )
    run.settle(plan, tokenizer)
    return plan


def get_model(model_provider: Callable, args: argparse.Namespace, config: RunConfig) -> list:
    """Model chunks of this rank (one per virtual stage), Float16Module for bf16, wrapped in megatron DDP."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    vpp = args.virtual_pipeline_model_parallel_size
    chunks = []
    for i in range(vpp or 1):
        vp_stage = i if vpp else None
        chunk = model_provider(
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        )
        chunks.append(chunk)
    add_lora_adapters(chunks, args)
    for chunk in chunks:
        for param in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    n_params = sum(p.numel() for c in chunks for p in c.parameters())
    if ps.get_data_parallel_rank() == 0:
        trainable = sum(p.numel() for c in chunks for p in c.parameters() if p.requires_grad)
        print(f" > number of parameters on (tensor, pipeline) model parallel rank "
              f"({ps.get_tensor_model_parallel_rank()}, {ps.get_pipeline_model_parallel_rank()}): {n_params}"
              + (f" (trainable LoRA parameters: {trainable})" if trainable != n_params else ""), flush=True)
    megatron_config = chunks[0].config
    if args.bf16:
        chunks = [Float16Module(megatron_config, c) for c in chunks]
    ddp = ddp_config(config)
    return [DistributedDataParallel(config=megatron_config, ddp_config=ddp, module=c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)]


def add_lora_adapters(chunks: list, args: argparse.Namespace) -> None:
    """--lora-target-modules: adapters on the named linear layers, every other weight frozen (before DDP)."""
    from mindspeed_llm.lora import LoraConfig, apply_lora

    cfg = LoraConfig.from_args(args)
    if cfg is None:
        return
    for chunk in chunks:
        apply_lora(chunk, cfg)
