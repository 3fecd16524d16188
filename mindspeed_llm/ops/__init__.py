"""Kernels behind the patches, one module per op, each with a torch reference, a CUDA path and an
NPU path chosen from the tensor's device (:mod:`mindspeed_llm.ops.backend`):

- :mod:`~mindspeed_llm.ops.attention_kernels`: flash-style core attention (blockwise torch kernel, SDPA,
  flash-attn, ``npu_fusion_attention``);
- :mod:`~mindspeed_llm.ops.context_parallel_kernels`: ring, Ulysses and hybrid attention over a CP group;
- :mod:`~mindspeed_llm.ops.rope`: rotate-half rotary embedding (``npu_rotary_mul`` on Ascend);
- :mod:`~mindspeed_llm.ops.rmsnorm`: RMSNorm and megatron-compatible norm modules that support
  sequence parallelism (``npu_rms_norm`` on Ascend);
- :mod:`~mindspeed_llm.ops.swiglu`: SwiGLU (``npu_swiglu`` on Ascend);
- :mod:`~mindspeed_llm.ops.cross_entropy`, :mod:`~mindspeed_llm.ops.fused_adam`,
  :mod:`~mindspeed_llm.ops.multi_tensor`: megatron's no-Apex fallbacks, faster;
- :mod:`~mindspeed_llm.ops.linear_cross_entropy`: the output layer fused into the cross entropy over blocks
  of tokens (``--loss-compute-mode chunk``);
- :mod:`~mindspeed_llm.ops.npu`: the lazy ``torch_npu`` import.

Packed samples are a layer above the attention kernels, which take documents only as plain tensors:
:mod:`~mindspeed_llm.ops.packing` (documents as megatron-core's ``PackedSeqParams``) and
:mod:`~mindspeed_llm.ops.document_attention` (causal attention within each document, per device and
over a CP group). Above both, megatron-core's core-attention modules:
:class:`~mindspeed_llm.ops.attention.FlashDotProductAttention` (``--use-flash-attn``) and
:class:`~mindspeed_llm.ops.context_parallel.ContextParallelAttention` (``--context-parallel-size`` > 1).

:mod:`mindspeed_llm.patches.features` installs them into megatron-core. Nothing here imports
``mindspeed_llm.training``, ``runtime`` or ``config``, and nothing here creates a process group.
"""
