"""megatron-core's mixture-of-experts layer without Transformer Engine, the ``grouped_gemm`` package or CUDA.

Base patches (group ``moe``, every device, applied with the op patches at ``import mindspeed_llm``), each
inert where what it stands in for is installed:

- ``moe_utils.router_gating_linear`` (the router's projection): megatron-core 0.16.1 calls
  ``te_general_gemm`` there, a name it defines only when Transformer Engine imports, so without TE every
  router raises ``NameError``. Replaced by :func:`~mindspeed_llm.ops.moe.router_gating_linear` (the same
  product in ``router_dtype``) when TE is absent.
- ``moe_utils.maybe_move_tensor_to_cpu``: the all-to-all dispatcher asks it for the split sizes "as numpy"
  before ``all_to_all_single``; it converts only CUDA tensors, so on the CPU the splits stay tensors and
  gloo's ``all_to_all_single`` rejects them. Wrapped: a CPU tensor asked for as numpy becomes numpy.
- ``grouped_gemm_util.ops`` / ``assert_grouped_gemm_is_available`` (``--moe-grouped-gemm``, megatron's
  ``GroupedMLP``): the CUDA-only ``grouped_gemm`` package, when it is not installed, is stood in for by
  :class:`~mindspeed_llm.ops.moe.GroupedGemmOps` (one product per expert; the package where present).
- ``experts.GroupedMLP.forward``: :func:`~mindspeed_llm.ops.moe.grouped_mlp_forward`, the same body on that
  kernel without the bf16-only assertion and without ``torch.compile``d activations.

gloo's ``all_to_all_single`` takes uneven splits of CPU tensors, and megatron's ``new_empty(...,
device=torch.cuda.current_device())`` output buffer lands on the CPU through the device layer's tensor
factories (:mod:`mindspeed_llm.patches.device_cpu`), so megatron's own alltoall and allgather dispatchers run
on the CPU unchanged, except for one thing gloo lacks: all-gather and reduce-scatter of uneven blocks (the
alltoall dispatcher at TP > 1 gathers each TP rank's tokens over the TP group), which
``mappings._gather_along_first_dim`` / ``_reduce_scatter_along_first_dim`` then do as a padded
all-gather and an all-reduce (:func:`~mindspeed_llm.ops.moe.uneven_all_gather`,
:func:`~mindspeed_llm.ops.moe.uneven_reduce_scatter`;
other backends keep megatron's).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from mindspeed_llm.patches.registry import PatchRegistry, registry

GROUP = "moe"
MOE_UTILS = "megatron.core.transformer.moe.moe_utils"
GG_UTIL = "megatron.core.transformer.moe.grouped_gemm_util"
MAPPINGS = "megatron.core.tensor_parallel.mappings"
GROUPED_MLP = "megatron.core.transformer.moe.experts.GroupedMLP"


def _numpy_splits_on_cpu(original: Callable) -> Callable:
    @functools.wraps(original)
    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and tensor.device.type == "cpu":
            return tensor.numpy()
        return original(tensor, as_numpy, record_stream)

    return maybe_move_tensor_to_cpu


def _uneven_gather_on_gloo(original: Callable) -> Callable:
    from mindspeed_llm.ops.moe import _is_gloo, uneven_all_gather

    @functools.wraps(original)
    def _gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is not None and group is not None and group.size() > 1 and _is_gloo(group):
            return uneven_all_gather(input_, group, output_split_sizes)
        return original(input_, group, output_split_sizes, use_global_buffer)

    return _gather_along_first_dim


def _uneven_reduce_scatter_on_gloo(original: Callable) -> Callable:
    from mindspeed_llm.ops.moe import _is_gloo, uneven_reduce_scatter

    @functools.wraps(original)
    def _reduce_scatter_along_first_dim(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is not None and group is not None and group.size() > 1 and _is_gloo(group):
            return uneven_reduce_scatter(input_, group, input_split_sizes)
        return original(input_, group, input_split_sizes, use_global_buffer)

    return _reduce_scatter_along_first_dim


def register_moe_patches(reg: PatchRegistry) -> list:
    """Register (not apply) the MoE patches this installation needs; return them."""
    from mindspeed_llm.ops import moe

    moe_utils = importlib.import_module(MOE_UTILS)
    gg = importlib.import_module(GG_UTIL)
    importlib.import_module("megatron.core.transformer.moe.router")
    importlib.import_module("megatron.core.transformer.moe.token_dispatcher")
    r = functools.partial(reg.register, group=GROUP)
    chosen = []
    if not hasattr(moe_utils, "te_general_gemm"):
        chosen.append(r(f"{MOE_UTILS}.router_gating_linear", moe.router_gating_linear,
                        signature="(inp, weight, bias, router_dtype)",
                        description="MoE router projection without Transformer Engine (megatron's refers to "
                                    "te_general_gemm, undefined without TE)"))
    chosen.append(r(f"{MOE_UTILS}.maybe_move_tensor_to_cpu", wrapper=_numpy_splits_on_cpu,
                    signature="(tensor, as_numpy=False, record_stream=False)",
                    description="all-to-all split sizes as numpy for CPU tensors too (gloo rejects tensors)"))
    for name, wrapper, what in (("_gather_along_first_dim", _uneven_gather_on_gloo, "all-gather"),
                                ("_reduce_scatter_along_first_dim", _uneven_reduce_scatter_on_gloo,
                                 "reduce-scatter")):
        split = "output_split_sizes" if what == "all-gather" else "input_split_sizes"
        chosen.append(r(f"{MAPPINGS}.{name}", wrapper=wrapper,
                        signature=f"(input_, group, {split}=None, use_global_buffer=False)",
                        description=f"uneven {what} over TP ranks on gloo (the alltoall dispatcher at TP>1 "
                                    "with EP; gloo needs equal blocks)"))
    if not gg.grouped_gemm_is_available():
        chosen.append(r(f"{GG_UTIL}.ops", moe.GroupedGemmOps,
                        description="--moe-grouped-gemm without the grouped_gemm package: one product per "
                                    "expert (mindspeed_llm.ops.moe.grouped_gemm)"))
        chosen.append(r(f"{GG_UTIL}.assert_grouped_gemm_is_available", moe.assert_grouped_gemm_available,
                        signature="()",
                        description="GroupedMLP builds without the grouped_gemm package (ops.moe stands in)"))
    chosen.append(r(f"{GROUPED_MLP}.forward", moe.grouped_mlp_forward,
                    signature="(self, permuted_local_hidden_states, tokens_per_expert, permuted_probs)",
                    description="GroupedMLP on ops.moe.grouped_gemm in any dtype (megatron's asserts bf16) "
                                "with eager activations (no torch.compile)"))
    return chosen


def apply_moe_patches(reg: PatchRegistry = registry) -> None:
    """Apply the MoE patches (registering them on first use)."""
    if not reg.patches(GROUP):
        register_moe_patches(reg)
    reg.apply(GROUP)


def revert_moe_patches(reg: PatchRegistry = registry) -> None:
    """Undo :func:`apply_moe_patches`."""
    reg.revert(GROUP)
