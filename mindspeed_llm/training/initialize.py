"""Start-up: process group from torchrun's environment, megatron-core parallel state, seeds, patches, logs."""

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

from mindspeed_llm.training.arguments import (
    ArgumentError,
    given_flags,
    kernel_noop_flags,
    parse_args,
    validate_args,
)

logger = logging.getLogger("mindspeed_llm.training")

_STATE: dict = {}


def get_args() -> argparse.Namespace:
    """The arguments of this training run (for entry scripts such as pretrain_gpt.py)."""
    if "args" not in _STATE:
        raise RuntimeError("training arguments are not initialised: call initialize_megatron() first")
    return _STATE["args"]


def set_args(args: argparse.Namespace) -> None:
    """Make ``args`` what :func:`get_args` returns."""
    _STATE["args"] = args


def launch_flags() -> set[str]:
    """Argument names written on this launch's command line (the others are defaults)."""
    return _STATE.get("given", set())


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


def enable_feature_patches(args: argparse.Namespace) -> list[str]:
    """--use-flash-attn / --use-fused-* through the patch layer's feature patches, pinned to this device."""
    from mindspeed_llm.patches.features import enable_feature_patches_from_args

    try:
        return enable_feature_patches_from_args(args, device=args.device)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def initialize_megatron(argv: list[str] | None = None, extra_args_provider=None,
                        args_defaults: dict | None = None, check=None) -> argparse.Namespace:
    """Parse and validate flags, start the process group and parallel state, seed, enable patches.

    ``check`` replaces the training rules of ``arguments.check_args`` (inference.py passes its own).
    """
    from megatron.core import parallel_state as ps

    import mindspeed_llm

    args = parse_args(argv, extra_args_provider)
    _STATE["given"] = given_flags(argv, extra_args_provider)
    for key, value in (args_defaults or {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    world = int(os.environ.get("WORLD_SIZE", 1))
    setup_logging(int(os.environ.get("RANK", 0)), world)
    if args.use_checkpoint_args or (args_defaults or {}).get("use_checkpoint_args"):
        from mindspeed_llm.runtime.checkpoint.launch import load_args_from_checkpoint

        load_args_from_checkpoint(args)  # before validation, as Megatron-LM
    validate_args(args, world, check)  # before the process group: a bad flag fails fast on every rank
    initialize_distributed(args.distributed_timeout_minutes)
    args.rank = torch.distributed.get_rank()
    args.device = mindspeed_llm.DEVICE
    ps.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        distributed_timeout_minutes=args.distributed_timeout_minutes,
    )
    if args.context_parallel_size > 1 and args.context_parallel_algo == "hybrid_cp_algo":
        from mindspeed_llm.ops.context_parallel import initialize_hybrid_cp_groups

        initialize_hybrid_cp_groups(args.ulysses_degree_in_cp, args.tensor_model_parallel_size,
                                    args.pipeline_model_parallel_size, args.context_parallel_size)
    set_seed(args.seed)
    features = enable_feature_patches(args)
    set_args(args)
    if features:
        logger.info("> feature patches: %s", ", ".join(features))
    if args.device == "cpu":
        from mindspeed_llm.patches import cpu_malloc

        if cpu_malloc.keep_freed_memory():
            logger.info("> host memory: freed blocks stay in the heap for reuse (glibc mmap/trim thresholds "
                        "raised; %s=default keeps glibc's defaults)", cpu_malloc.ENV)
    noops = kernel_noop_flags(args, args.device)
    if noops:
        logger.info("NOTE: no-op on %s (kernel/backend choices that mean nothing here): %s", args.device,
                    ", ".join(noops))
    logger.info("> initialized world of %d on %s: TP=%d PP=%d%s%s DP=%d, %d micro-batches of %d per step",
                args.world_size, args.device, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                f" VPP={args.virtual_pipeline_model_parallel_size}" if args.virtual_pipeline_model_parallel_size
                else "", f" CP={args.context_parallel_size} ({_cp_algo_words(args)})"
                if args.context_parallel_size > 1 else "", args.data_parallel_size, args.num_microbatches, args.micro_batch_size)
    return args
