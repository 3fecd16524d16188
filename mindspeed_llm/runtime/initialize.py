"""Start-up: flags to configuration, process group from torchrun's environment, parallel state, seeds,
patches, logs."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import random
import socket
import sys

import numpy as np
import torch

from mindspeed_llm.config.flags import (
    ArgumentError,
    fallback_option_note,
    given_flags,
    kernel_noop_flags,
    parse_args,
)
from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.namespace import build_namespace
from mindspeed_llm.config.plan import parallel_layout
from mindspeed_llm.config.validate import apply_defaults, take_checkpoint_values, validate_args
from mindspeed_llm.runtime import run

logger = logging.getLogger("mindspeed_llm.training")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cp_algo_words(args: argparse.Namespace) -> str:
    """The CP algorithm for the start-up line; hybrid_cp_algo with its Ulysses x ring split."""
    if args.context_parallel_algo != "hybrid_cp_algo":
        return args.context_parallel_algo
    ulysses = args.ulysses_degree_in_cp
    return f"hybrid_cp_algo: Ulysses {ulysses} x ring {args.context_parallel_size // ulysses}"


def initialize_distributed(timeout_minutes: int = 10) -> None:
    """``init_process_group`` from torchrun's RANK/WORLD_SIZE/LOCAL_RANK (one process without torchrun)."""
    from mindspeed_llm.patches.device import distributed_backend

    if torch.distributed.is_initialized():
        return
    if "RANK" not in os.environ:  # plain `python pretrain_gpt.py ...`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend=distributed_backend(), rank=rank, world_size=world,
                                         timeout=datetime.timedelta(minutes=timeout_minutes))


def setup_logging(rank: int, world: int) -> None:
    """Our INFO messages on rank 0 only (they are the same on every rank); warnings everywhere."""
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("mindspeed_llm")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    logging.getLogger("megatron").setLevel(logging.WARNING)


def set_seed(seed: int) -> None:
    """Megatron-LM's seeding: seed + 100 x pipeline rank, and the model-parallel RNG tracker."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def enable_feature_patches(args: argparse.Namespace, device: str) -> list[str]:
    """--use-flash-attn / --use-fused-* through the patch layer's feature patches, pinned to this device."""
    from mindspeed_llm.patches.features import enable_feature_patches_from_args

    try:
        return enable_feature_patches_from_args(args, device=device)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def initialize_megatron(argv: list[str] | None = None, extra_args_provider=None,
                        args_defaults: dict | None = None, check=None) -> argparse.Namespace:
    """Flags to configuration, then the process group and parallel state, seeds and patches.

    Returns the namespace of the flags (``runtime.run.get_args()`` answers it too, until the model setup
    adds the plan). ``check`` replaces the training rules of ``config.validate.check_args`` (inference.py
    passes its own).
    """
    from megatron.core import parallel_state as ps

    import mindspeed_llm

    parsed = parse_args(argv, extra_args_provider)
    given = given_flags(argv, extra_args_provider)
    apply_defaults(parsed, args_defaults)
    world = int(os.environ.get("WORLD_SIZE", 1))
    setup_logging(int(os.environ.get("RANK", 0)), world)
    from mindspeed_llm.from_hf.build import prepare_caches

    prepare_caches(parsed)  # an HF --load folder, raw --data-path files: converted / preprocessed once
    if parsed.use_checkpoint_args or (args_defaults or {}).get("use_checkpoint_args"):
        from mindspeed_llm.runtime.checkpoint.launch import load_args_from_checkpoint

        take_checkpoint_values(parsed, load_args_from_checkpoint(parsed))  # before validation, as Megatron-LM
    validate_args(parsed, world, check)  # before the process group: a bad flag fails fast on every rank
    config = RunConfig.from_args(parsed)
    layout = parallel_layout(config, world)
    args = build_namespace(config)
    initialize_distributed(config.parallel.distributed_timeout_minutes)
    device = mindspeed_llm.DEVICE
    par = config.parallel
    ps.initialize_model_parallel(
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
        context_parallel_size=par.context_parallel_size,
        expert_model_parallel_size=par.expert_model_parallel_size,
        expert_tensor_parallel_size=par.expert_tensor_parallel_size,
        distributed_timeout_minutes=par.distributed_timeout_minutes,
    )
    if par.context_parallel_size > 1 and par.context_parallel_algo == "hybrid_cp_algo":
        from mindspeed_llm.runtime.parallel import initialize_hybrid_cp_groups

        initialize_hybrid_cp_groups(par.ulysses_degree_in_cp, par.tensor_model_parallel_size,
                                    par.pipeline_model_parallel_size, par.context_parallel_size)
    set_seed(config.training.seed)
    features = enable_feature_patches(args, device)
    run.start(config, given, args)
    if features:
        logger.info("> feature patches: %s", ", ".join(features))
    if device == "cpu":
        from mindspeed_llm.patches import cpu_malloc

        if cpu_malloc.keep_freed_memory():
            logger.info("> host memory: freed blocks stay in the heap for reuse (glibc mmap/trim thresholds "
                        "raised; %s=default keeps glibc's defaults)", cpu_malloc.ENV)
    fallback = fallback_option_note(args, device)
    if fallback:
        logger.info("%s", fallback)
    noops = kernel_noop_flags(args, device)
    if noops:
        logger.info("NOTE: no-op on %s (kernel/backend choices that mean nothing here): %s", device,
                    ", ".join(noops))
    vpp = layout.virtual_pipeline_model_parallel_size
    logger.info("> initialized world of %d on %s: TP=%d PP=%d%s%s DP=%d, %d micro-batches of %d per step",
                layout.world_size, device, par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                f" VPP={vpp}" if vpp else "", f" CP={par.context_parallel_size} ({_cp_algo_words(args)})"
                if par.context_parallel_size > 1 else "", layout.data_parallel_size, layout.num_microbatches,
                config.training.micro_batch_size)
    return args
