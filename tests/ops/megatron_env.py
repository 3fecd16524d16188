"""A one-process megatron-core environment (gloo, TP=PP=1) for tests that build megatron modules."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from tests.conftest import free_port


@contextlib.contextmanager
def single_process_model_parallel(seed: int = 1234):
    """Initialise torch.distributed (gloo, world size 1) and megatron's parallel state; undo on exit."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    import mindspeed_llm  # noqa: F401  - the CPU device layer (RNG tracker, 'cuda' factories)

    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    owns_state = not parallel_state.model_parallel_is_initialized()
    if owns_state:
        parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if owns_state:
            parallel_state.destroy_model_parallel()
        if owns_group:
            dist.destroy_process_group()
