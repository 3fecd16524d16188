"""How the benches run the peers (transformers, peft): as a competent user of the peer would run them.

Every bench that compares with a peer takes its settings from here, and prints them beside its figures
(:func:`describe`), so that a ratio always says what it was measured against:

- the optimizer: ``torch.optim.AdamW(fused=True)``. torch's default on the CPU is the per-parameter loop
  (``fused`` and ``foreach`` are CUDA defaults only); the fused kernel is what our side runs
  (``ops/fused_adam.py``) and what a user of transformers asks for (``optim="adamw_torch_fused"``).
- the threads: the same ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` on both sides.
- the allocator: glibc told to keep freed blocks, through the environment variables that do what
  ``mindspeed_llm.patches.cpu_malloc`` does with ``mallopt`` (:data:`MALLOC_ENV`); the benches run the
  peer both with and without them and compare with the faster of the two.
- bf16: ``torch.autocast("cpu", dtype=torch.bfloat16)`` over fp32 weights and fp32 AdamW, the
  like-for-like of ``--bf16`` (bf16 compute, fp32 main weights), not a model cast to bf16.
- decoding: ``generate(cache_implementation="static")`` (and the dynamic cache, printed beside it).
"""

from __future__ import annotations

import contextlib
import os

# The environment equivalents of patches/cpu_malloc.py's mallopt calls (glibc reads them at start-up).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**31 - 1),
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


def peer_env(base: dict, threads: int, malloc: bool) -> dict:
    """The peer process's environment: the same threads, glibc's defaults or :data:`MALLOC_ENV`."""
    env = {k: v for k, v in base.items() if k not in MALLOC_ENV}
    env["OMP_NUM_THREADS"] = str(threads)
    if malloc:
        env.update(MALLOC_ENV)
    return env


def peer_adamw(params, **kwargs):
    """``torch.optim.AdamW`` with torch's fused kernel (one pass per tensor on the CPU)."""
    import torch

    return torch.optim.AdamW(params, fused=True, **kwargs)


def peer_autocast(dtype: str):
    """The peer's compute-dtype context: autocast bf16 on the CPU for ``bf16``, nothing for fp32."""
    import torch

    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def malloc_kept() -> bool:
    """Whether this process was started with :data:`MALLOC_ENV`."""
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


def describe(dtype: str, threads: int) -> str:
    """One line of the peer's settings for a bench's output."""
    weights = "fp32 weights + autocast bf16" if dtype == "bf16" else "fp32"
    return (f"peer settings: {weights}, AdamW(fused=True), {threads} threads (OMP_NUM_THREADS and "
            f"torch.set_num_threads), run with glibc's malloc defaults and with "
            f"{' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} (as pretrain_gpt.py's cpu_malloc)")


def ours_describe(dtype: str, threads: int) -> str:
    """One line of our side's settings for a bench's output."""
    return (f"our settings: {'--bf16 (fp32 main weights)' if dtype == 'bf16' else 'fp32'}, megatron's "
            f"optimizer with torch's fused Adam (ops/fused_adam.py), {threads} threads, glibc keeps freed "
            "blocks (patches/cpu_malloc.py), --use-flash-attn --use-fused-rmsnorm --use-fused-swiglu "
            "--use-fused-rotary-pos-emb")
