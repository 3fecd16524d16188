"""``multi_tensor_scale`` for megatron-core without Apex, on torch's ``_foreach`` kernels.

megatron's local fallback (``megatron.core.utils.local_multi_tensor_scale``) computes
``dst.copy_(src * scale)`` tensor by tensor: a temporary the size of every tensor and two passes,
both when gradient clipping scales the gradients in place (``src is dst``) and when the mixed
precision optimizer copies its float32 main parameters into the bf16 model (``scale == 1``).
:func:`foreach_multi_tensor_scale` gives the same values bit for bit with one pass and no
temporary: an in-place ``_foreach_mul_`` or a ``_foreach_copy_``.
"""

from __future__ import annotations

import torch


def foreach_multi_tensor_scale(chunk_size, noop_flag, tensor_lists, scale) -> None:
    """``dst = src * scale`` for each pair of ``tensor_lists = [srcs, dsts]`` (Apex's signature)."""
    srcs, dsts = list(tensor_lists[0]), list(tensor_lists[1])
    if not srcs:
        return
    if all(src is dst for src, dst in zip(srcs, dsts)):
        torch._foreach_mul_(dsts, scale)
        return
    if scale == 1.0:
        torch._foreach_copy_(dsts, srcs)
        return
    for src, dst in zip(srcs, dsts):
        dst.copy_(src * scale)
