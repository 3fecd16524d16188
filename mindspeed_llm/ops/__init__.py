"""Kernels behind the patches, one module per op, each with a torch reference, a CUDA path and an
NPU path chosen from the tensor's device (:mod:`mindspeed_llm.ops.backend`):

- :mod:`~mindspeed_llm.ops.attention`: flash-style core attention (blockwise torch kernel, SDPA,
  flash-attn, ``npu_fusion_attention``) and ``FlashDotProductAttention`` for megatron's local spec;
- :mod:`~mindspeed_llm.ops.rope`: rotate-half rotary embedding (``npu_rotary_mul`` on Ascend);
- :mod:`~mindspeed_llm.ops.rmsnorm`: RMSNorm and megatron-compatible norm modules that support
  sequence parallelism (``npu_rms_norm`` on Ascend);
- :mod:`~mindspeed_llm.ops.swiglu`: SwiGLU (``npu_swiglu`` on Ascend);
- :mod:`~mindspeed_llm.ops.npu`: the lazy ``torch_npu`` import.

:mod:`mindspeed_llm.patches.features` installs them into megatron-core.
"""
