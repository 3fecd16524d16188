"""Op patches: megatron-core's local-spec seams swapped for the kernels in :mod:`mindspeed_llm.ops`.

Base patches (group ``ops``), applied by the device layer at ``import mindspeed_llm`` through
:func:`apply_base_op_patches`:

- ``LocalSpecProvider.layer_norm`` and ``torch_norm.WrappedTorchNorm`` (with every copy megatron
  imported: the final layernorm of ``TransformerBlock``, the spec modules' ``LNImpl``) become
  :class:`~mindspeed_llm.ops.rmsnorm.MegatronNorm`: the same LayerNorm/RMSNorm math, plus support
  for ``sequence_parallel=True``, which megatron's torch norm rejects. Same state-dict keys.
- ``megatron.core.optimizer.get_megatron_optimizer`` is wrapped so the torch Adam/AdamW megatron
  falls back to without Transformer Engine or Apex runs torch's fused kernel
  (:mod:`~mindspeed_llm.ops.fused_adam`), as Megatron-LM runs Apex's fused Adam on GPUs.
- ``megatron.core.utils.local_multi_tensor_scale`` (megatron's stand-in for Apex's
  ``multi_tensor_scale``: gradient clipping, main -> model parameter copies) runs on torch's
  ``_foreach`` kernels (:mod:`~mindspeed_llm.ops.multi_tensor`), bit-identical and one pass.
- Packed samples (:mod:`mindspeed_llm.patches.packed`): with document-packed ``packed_seq_params``
  megatron's local ``DotProductAttention`` attends within each document (it asserts otherwise) and
  ``GPTModel._preprocess`` restarts RoPE positions per document; without them both are megatron's.
- Mixture of experts (:mod:`mindspeed_llm.patches.moe`, group ``moe``): megatron-core's MoE layer, router,
  alltoall/allgather dispatchers and ``--moe-grouped-gemm`` layout without Transformer Engine, the
  ``grouped_gemm`` package or CUDA.

CPU base patches (group ``ops-cpu``), applied with the above when the device is the CPU:

- ``tensor_parallel.vocab_parallel_cross_entropy`` becomes
  :func:`~mindspeed_llm.ops.cross_entropy.vocab_parallel_cross_entropy`: megatron's float32 math
  and all-reduces, computed over cache-sized blocks of rows instead of whole-tensor passes over a
  float32 copy of the logits. CPU only: on a GPU its per-block Python loop would be launch-bound.
- The four kernels behind megatron's fused SwiGLU (``fused_bias_swiglu.swiglu``, ``bias_swiglu``,
  ``swiglu_back``, ``bias_swiglu_back``; used when ``config.bias_activation_fusion`` is True, which
  ``--swiglu`` gives by default as in Megatron-LM) become eager torch with the same math
  (:func:`~mindspeed_llm.ops.swiglu.megatron_swiglu` and friends). megatron compiles them with
  torch.compile, which on the CPU needs a C++ compiler and seconds per process and per new shape.
- On a CPU without bf16 matrix instructions (AVX2; :func:`~mindspeed_llm.ops.bf16_matmul.native_bf16_matmul`),
  megatron-core's ``linear_with_grad_accumulation_and_async_allreduce`` and ``linear_with_frozen_weight``
  compute bf16 products in fp32 and round once (:mod:`~mindspeed_llm.ops.bf16_matmul`): torch's bf16
  fallback there is 10-200x slower, with the same arithmetic.

Feature patches (group ``features``), enabled from the training flags by
:func:`enable_feature_patches` / :func:`enable_feature_patches_from_args`:

- ``--use-flash-attn``: ``LocalSpecProvider.core_attention`` returns
  :class:`~mindspeed_llm.ops.attention.FlashDotProductAttention`.
- ``--context-parallel-size`` > 1: ``LocalSpecProvider.core_attention`` returns
  :class:`~mindspeed_llm.ops.context_parallel.ContextParallelAttention` (ring or Ulysses attention,
  by ``TransformerConfig.cp_comm_type``), with or without ``--use-flash-attn``.
- ``--use-fused-rmsnorm``: ``RMSNorm.kernel`` becomes the device's fused kernel (one autograd
  function on the CPU, ``torch.nn.functional.rms_norm`` on CUDA, ``npu_rms_norm`` on Ascend).
- ``--use-fused-rotary-pos-emb``: wraps ``rope_utils._apply_rotary_pos_emb_bshd`` (the unfused
  RoPE that megatron uses without Transformer Engine); interleaved and MLA variants keep megatron's.
- ``--use-fused-swiglu``: replaces ``fused_bias_swiglu.bias_swiglu_impl`` (and the copy in
  ``transformer.mlp``). Megatron's MLP calls it only when ``config.bias_activation_fusion`` is
  True: build the config with :func:`transformer_config_overrides` (as Megatron-LM does by default
  for ``--swiglu``), or the flag changes nothing.

- ``--loss-compute-mode chunk``: wraps ``GPTModel._postprocess`` so that a training or evaluation forward
  with labels runs the output layer and the cross entropy together over blocks of ``--loss-chunk-size``
  tokens (:func:`~mindspeed_llm.ops.linear_cross_entropy.linear_cross_entropy`), with the output layer's
  own TP entry (copy to the region, or the sequence-parallel gather) and weight (tied or not). Everything
  else (no labels: logits; multi-token prediction; inference; a bias on the output layer) is megatron's.
  Off by default: it equals the unfused loss up to float32 rounding, not bit for bit.

Why flash attention is a flag and not a base patch: ``--use-flash-attn`` is the switch Megatron-LM
and MindSpeed users know, and a base patch would make it a flag that does nothing. It also changes
numerics that a user may compare against megatron (its dropout draws a different mask; rows with
no visible key give zeros where megatron averages all values) and does not cover sliding windows or
learnable softmax offsets. The norm swap is base because it is numerically megatron's own and is
needed for ``--sequence-parallel`` to work at all.
"""

from __future__ import annotations

import functools
import importlib
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from mindspeed_llm.patches.moe import apply_moe_patches, revert_moe_patches
from mindspeed_llm.patches.registry import PatchRegistry, registry, resolve_owner

BASE_GROUP = "ops"
CPU_BASE_GROUP = "ops-cpu"
CROSS_ENTROPY = "megatron.core.tensor_parallel.cross_entropy.vocab_parallel_cross_entropy"
GET_OPTIMIZER = "megatron.core.optimizer.get_megatron_optimizer"
LOCAL_MULTI_TENSOR_SCALE = "megatron.core.utils.local_multi_tensor_scale"
FEATURE_GROUP = "features"
FEATURE_FLAGS = ("use_flash_attn", "use_fused_rmsnorm", "use_fused_rotary_pos_emb", "use_fused_swiglu")
_DEVICE_TO_BACKEND = {"cpu": "torch", "cuda": "cuda", "npu": "npu"}

LOCAL_SPEC = "megatron.core.models.backends.LocalSpecProvider"
ROPE_BSHD = "megatron.core.models.common.embeddings.rope_utils._apply_rotary_pos_emb_bshd"
BIAS_SWIGLU = "megatron.core.fusions.fused_bias_swiglu.bias_swiglu_impl"
FUSED_SWIGLU_MODULE = "megatron.core.fusions.fused_bias_swiglu"


def _local_layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
    """Which module to use for layer norm: ours, for LayerNorm and RMSNorm alike."""
    from mindspeed_llm.ops.rmsnorm import MegatronNorm

    return MegatronNorm


def _local_core_attention(self) -> type:
    """Which module to use for attention: the flash-style kernel."""
    from mindspeed_llm.ops.attention import FlashDotProductAttention

    return FlashDotProductAttention


def _context_parallel_core_attention(self) -> type:
    """Which module to use for attention with context parallelism: ring or Ulysses attention."""
    from mindspeed_llm.ops.context_parallel import ContextParallelAttention

    return ContextParallelAttention


# Modules that copy WrappedTorchNorm at import (`LNImpl = WrappedTorchNorm`): imported before the
# patch applies, so the registry rebinds their copies and revert restores them.
_NORM_COPY_HOLDERS = (
    "megatron.core.models.backends",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.transformer.transformer_block",
)


def _register_base(reg: PatchRegistry) -> None:
    from mindspeed_llm.ops.fused_adam import fused_adam_wrapper
    from mindspeed_llm.ops.multi_tensor import foreach_multi_tensor_scale
    from mindspeed_llm.ops.rmsnorm import MegatronNorm
    from mindspeed_llm.patches.packed import register_packed_sequence_patches
    from mindspeed_llm.patches.rope import register_rope_patches

    for module in _NORM_COPY_HOLDERS:
        importlib.import_module(module)
    r = functools.partial(reg.register, group=BASE_GROUP)
    r(f"{LOCAL_SPEC}.layer_norm", _local_layer_norm, signature="(self, rms_norm=False, for_qk=False)",
      description="local-spec norms support sequence parallel (megatron's torch norm rejects it)")
    r("megatron.core.transformer.torch_norm.WrappedTorchNorm", MegatronNorm,
      signature="(config, hidden_size, eps=1e-05, persist_layer_norm=False, zero_centered_gamma=False, "
                "normalization='LayerNorm')",
      description="torch norm (final layernorm too) supports sequence parallel; same math and keys")
    r(GET_OPTIMIZER, wrapper=fused_adam_wrapper,
      signature="(config, model_chunks, config_overrides=None, use_gloo_process_groups=True, "
                "pg_collection=None, dump_param_to_param_group_map=None)",
      description="torch Adam/AdamW fallback (no TE/Apex) runs torch's fused kernel")
    r(LOCAL_MULTI_TENSOR_SCALE, foreach_multi_tensor_scale,
      signature="(chunk_size, noop_flag, tensor_lists, scale)",
      description="multi_tensor_scale fallback (no Apex) on torch _foreach kernels, bit-identical")
    register_packed_sequence_patches(reg, BASE_GROUP)
    register_rope_patches(reg, BASE_GROUP)


def _cross_entropy_wrapper(original: Callable) -> Callable:
    from mindspeed_llm.ops.cross_entropy import vocab_parallel_cross_entropy

    @functools.wraps(original)
    def blocked_vocab_parallel_cross_entropy(vocab_parallel_logits, target, label_smoothing=0.0):
        return vocab_parallel_cross_entropy(vocab_parallel_logits, target, label_smoothing,
                                            megatron_impl=original)

    return blocked_vocab_parallel_cross_entropy


_SWIGLU_SIGNATURES = {"swiglu": "(y)", "bias_swiglu": "(y, bias)", "swiglu_back": "(g, y)",
                      "bias_swiglu_back": "(g, y, bias)"}


# megatron-core functions decorated with @jit_fuser (torch.compile) that MoE layers call on every step: the
# probability-weighted SwiGLU of the experts (forward and backward) and the router's expert-bias update.
_EAGER_ON_CPU = {
    f"{FUSED_SWIGLU_MODULE}.weighted_swiglu": "(y, weights)",
    f"{FUSED_SWIGLU_MODULE}.weighted_swiglu_back": "(g, y, weights)",
    "megatron.core.transformer.moe.router.TopKRouter._apply_expert_bias":
        "(self, routing_map, padding_mask=None)",
}

TP_LAYERS = "megatron.core.tensor_parallel.layers"
_LINEAR_SIGNATURES = {
    "linear_with_grad_accumulation_and_async_allreduce":
        "(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, "
        "grad_output_buffer=None, wgrad_deferral_limit=0, async_grad_allreduce=None, tp_group=None)",
    "linear_with_frozen_weight":
        "(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, tp_group, "
        "grad_output_buffer=None, wgrad_deferral_limit=None, async_grad_allreduce=None)",
}


def _register_cpu_base(reg: PatchRegistry) -> None:
    from mindspeed_llm.ops import bf16_matmul, swiglu

    importlib.import_module("megatron.core.tensor_parallel")
    reg.register(CROSS_ENTROPY, wrapper=_cross_entropy_wrapper, group=CPU_BASE_GROUP,
                 signature="(vocab_parallel_logits, target, label_smoothing=0.0)",
                 description="vocab-parallel cross entropy in cache-sized blocks (CPU)")
    importlib.import_module(FUSED_SWIGLU_MODULE)
    for name, signature in _SWIGLU_SIGNATURES.items():
        reg.register(f"{FUSED_SWIGLU_MODULE}.{name}", getattr(swiglu, f"megatron_{name}"),
                     group=CPU_BASE_GROUP, signature=signature,
                     description=f"fused SwiGLU's {name} in eager torch (no torch.compile on the CPU)")
    for target, signature in _EAGER_ON_CPU.items():
        owner, attr = resolve_owner(target)
        compiled = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        eager = getattr(compiled, "__wrapped__", compiled)  # megatron's own body, undecorated
        reg.register(target, eager, group=CPU_BASE_GROUP, signature=signature,
                     description=f"{attr}: megatron's own body run eagerly (its @jit_fuser would compile it "
                                 "with torch.compile's C++ backend in every process on the CPU)")
    if not bf16_matmul.native_bf16_matmul():
        for name, signature in _LINEAR_SIGNATURES.items():
            reg.register(f"{TP_LAYERS}.{name}", wrapper=bf16_matmul.fp32_products, group=CPU_BASE_GROUP,
                         signature=signature,
                         description=f"{name}: bf16 products in fp32, rounded once (this CPU has no bf16 "
                                     "matrix instructions; torch's fallback is 10-200x slower)")


def apply_base_op_patches(device: str, reg: PatchRegistry = registry) -> None:
    """Apply the op patches every device gets at import (sequence-parallel-capable norms, fused
    Adam fallback), and on the CPU the blocked cross entropy and the eager fused-SwiGLU kernels."""
    if device not in _DEVICE_TO_BACKEND:
        raise ValueError(f"device={device!r}: expected one of {', '.join(_DEVICE_TO_BACKEND)}")
    if not reg.patches(BASE_GROUP):
        _register_base(reg)
    reg.apply(BASE_GROUP)
    apply_moe_patches(reg)
    if device == "cpu":
        if not reg.patches(CPU_BASE_GROUP):
            _register_cpu_base(reg)
        reg.apply(CPU_BASE_GROUP)
    else:
        reg.revert(CPU_BASE_GROUP)


def revert_base_op_patches(reg: PatchRegistry = registry) -> None:
    """Undo :func:`apply_base_op_patches`."""
    reg.revert(CPU_BASE_GROUP)
    revert_moe_patches(reg)
    reg.revert(BASE_GROUP)


def _rope_wrapper(backend: str | None) -> Callable[[Callable], Callable]:
    def wrap(original: Callable) -> Callable:
        from mindspeed_llm.ops.rope import apply_rotary_pos_emb

        @functools.wraps(original)
        def _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=False, multi_latent_attention=False,
                                       mscale=1.0):
            if rotary_interleaved or multi_latent_attention:
                return original(t, freqs, rotary_interleaved, multi_latent_attention, mscale)
            return apply_rotary_pos_emb(t, freqs, mscale, backend=backend)

        return _apply_rotary_pos_emb_bshd

    return wrap


def _swiglu_wrapper(backend: str | None) -> Callable[[Callable], Callable]:
    def wrap(original: Callable) -> Callable:
        from mindspeed_llm.ops.swiglu import bias_swiglu

        @functools.wraps(original)
        def bias_swiglu_impl(input, bias, fp8_input_store=False, cpu_offload_input=False):
            if fp8_input_store or cpu_offload_input:
                return original(input, bias, fp8_input_store, cpu_offload_input)
            return bias_swiglu(input, bias, backend=backend)

        return bias_swiglu_impl

    return wrap


def _fused_rms_kernel(backend: str | None) -> staticmethod:
    from mindspeed_llm.ops.rmsnorm import rms_norm

    def fused_rms_norm(x, weight, eps):
        return rms_norm(x, weight, eps, backend=backend)

    return staticmethod(fused_rms_norm)


GPT_POSTPROCESS = "megatron.core.models.gpt.gpt_model.GPTModel._postprocess"
_POSTPROCESS_SIGNATURE = (
    "(self, hidden_states, input_ids, position_ids, labels, rotary_pos_emb, rotary_pos_cos, "
    "rotary_pos_sin, mtp_in_postprocess=None, loss_mask=None, decoder_input=None, attention_mask=None, "
    "inference_params=None, packed_seq_params=None, sequence_len_offset=None, runtime_gather_output=None, "
    "extra_block_kwargs=None, inference_context=None)")


def _chunked_loss_postprocess(chunk: int) -> Callable[[Callable], Callable]:
    """``GPTModel._postprocess`` that computes a labelled forward's loss with the output layer fused in."""

    def wrap(original: Callable) -> Callable:
        import torch
        from megatron.core.config_logger import has_config_logger_enabled
        from megatron.core.tensor_parallel import mappings

        from mindspeed_llm.ops.bf16_matmul import native_bf16_matmul
        from mindspeed_llm.ops.linear_cross_entropy import linear_cross_entropy

        @functools.wraps(original)
        def _postprocess(self, *args, **kwargs):
            labels = kwargs.get("labels")
            layer = getattr(self, "output_layer", None)
            if (args or labels is None or not self.post_process or kwargs.get("mtp_in_postprocess")
                    or self.config.mtp_num_layers is not None or kwargs.get("inference_context") is not None
                    or has_config_logger_enabled(self.config) or self.config.cross_entropy_loss_fusion
                    or self.config.defer_embedding_wgrad_compute or getattr(layer, "bias", None) is not None):
                return original(self, *args, **kwargs)
            hidden = kwargs["hidden_states"]
            weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights \
                else layer.weight
            group = layer.tp_group
            world = group.size() if group is not None else 1
            if layer.sequence_parallel:  # the output layer's own entry: gather forward, reduce-scatter back
                hidden = mappings.gather_from_sequence_parallel_region(hidden, group=group)
            elif world > 1:  # copy forward, all-reduce of the hidden states' gradient back
                hidden = mappings.copy_to_tensor_model_parallel_region(hidden, group=group)
            if hidden.dtype == torch.bfloat16 and hidden.device.type == "cpu" and not native_bf16_matmul():
                hidden, weight = hidden.float(), weight.float()  # ops/bf16_matmul.py: products in fp32
            loss = linear_cross_entropy(hidden, weight, labels.transpose(0, 1), chunk, group,
                                        group.rank() if world > 1 else 0, world)
            return loss.transpose(0, 1).contiguous()  # [s, b] -> [b, s], as compute_language_model_loss

        return _postprocess

    return wrap


def _backend_for(device: str | None) -> str | None:
    if device is None:
        return None  # each call dispatches on its tensors' device
    if device not in _DEVICE_TO_BACKEND:
        raise ValueError(f"device={device!r}: expected one of {', '.join(_DEVICE_TO_BACKEND)} or None")
    if device == "npu":
        from mindspeed_llm.ops.npu import require_torch_npu

        require_torch_npu(op="enable_feature_patches(device='npu')")
    return _DEVICE_TO_BACKEND[device]


_ROPE_BSHD_SIGNATURE = "(t, freqs, rotary_interleaved=False, multi_latent_attention=False, mscale=1.0)"
_BIAS_SWIGLU_SIGNATURE = "(input, bias, fp8_input_store=False, cpu_offload_input=False)"


def register_feature_patches(
    reg: PatchRegistry,
    use_flash_attn: bool = False,
    use_fused_rmsnorm: bool = False,
    use_fused_rotary_pos_emb: bool = False,
    use_fused_swiglu: bool = False,
    device: str | None = None,
    context_parallel: bool = False,
    loss_chunk_size: int | None = None,
) -> list:
    """Register (not apply) the feature patches for the given flags in ``reg``; return them.

    ``device`` ('cpu', 'cuda', 'npu') pins the kernels to that device's implementation; None lets
    each call follow its tensors' device. ``context_parallel`` wins over ``use_flash_attn``.
    ``loss_chunk_size`` (``--loss-compute-mode chunk``'s ``--loss-chunk-size``; None: off) fuses the output
    layer into the loss.
    """
    backend = _backend_for(device)
    r = functools.partial(reg.register, group=FEATURE_GROUP)
    chosen = []
    if context_parallel:
        chosen.append(r(f"{LOCAL_SPEC}.core_attention", _context_parallel_core_attention, signature="(self)",
                        description="--context-parallel-size > 1: ring/Ulysses attention "
                                    "(megatron's asserts)"))
        if backend is not None:
            chosen.append(r("mindspeed_llm.ops.context_parallel.ContextParallelAttention.backend", backend,
                            description=f"CP attention kernels pinned to {device}"))
    elif use_flash_attn:
        chosen.append(r(f"{LOCAL_SPEC}.core_attention", _local_core_attention, signature="(self)",
                        description="--use-flash-attn: flash-style core attention (blockwise, native GQA)"))
        if backend is not None:
            chosen.append(r("mindspeed_llm.ops.attention.FlashDotProductAttention.backend", backend,
                            description=f"attention kernels pinned to {device}"))
    if use_fused_rmsnorm:
        chosen.append(r("mindspeed_llm.ops.rmsnorm.RMSNorm.kernel", _fused_rms_kernel(backend),
                        description="--use-fused-rmsnorm: the device's fused RMSNorm kernel"))
    if use_fused_rotary_pos_emb:
        chosen.append(r(ROPE_BSHD, wrapper=_rope_wrapper(backend), signature=_ROPE_BSHD_SIGNATURE,
                        description="--use-fused-rotary-pos-emb: the device's fused RoPE "
                                    "(interleaved/MLA: megatron's)"))
    if use_fused_swiglu:
        chosen.append(r(BIAS_SWIGLU, wrapper=_swiglu_wrapper(backend), signature=_BIAS_SWIGLU_SIGNATURE,
                        description="--use-fused-swiglu: the device's fused SwiGLU "
                                    "(needs config.bias_activation_fusion)"))
    if loss_chunk_size is not None:
        importlib.import_module("megatron.core.models.gpt.gpt_model")
        chosen.append(r(GPT_POSTPROCESS, wrapper=_chunked_loss_postprocess(loss_chunk_size),
                        signature=_POSTPROCESS_SIGNATURE,
                        description=f"--loss-compute-mode chunk: output layer + cross entropy over blocks "
                                    f"of {loss_chunk_size} tokens, no [tokens, vocabulary] logits kept"))
    return chosen


def enable_feature_patches(
    use_flash_attn: bool = False,
    use_fused_rmsnorm: bool = False,
    use_fused_rotary_pos_emb: bool = False,
    use_fused_swiglu: bool = False,
    device: str | None = None,
    reg: PatchRegistry = registry,
    context_parallel: bool = False,
    loss_chunk_size: int | None = None,
) -> list[str]:
    """Apply the feature patches for the given flags (replacing any enabled before); return their targets.

    ``device`` ('cpu', 'cuda', 'npu') pins the kernels to that device's implementation; None lets
    each call follow its tensors' device. ``context_parallel`` (``--context-parallel-size`` > 1)
    makes the core attention ring/Ulysses attention, whatever ``use_flash_attn`` says (megatron's
    local attention asserts with CP; the CP module runs the flash-style kernels itself).
    ``loss_chunk_size``: ``--loss-compute-mode chunk`` with this ``--loss-chunk-size`` (None: off).
    """
    _backend_for(device)  # a wrong device is refused before the enabled patches are dropped
    disable_feature_patches(reg)
    chosen = register_feature_patches(reg, use_flash_attn, use_fused_rmsnorm, use_fused_rotary_pos_emb,
                                      use_fused_swiglu, device, context_parallel, loss_chunk_size)
    reg.apply(FEATURE_GROUP)
    return [patch.target for patch in chosen]


def disable_feature_patches(reg: PatchRegistry = registry) -> None:
    """Revert every feature patch, restoring megatron-core's (or the base patches') originals, and
    forget them: the registry then lists only what a later enable chooses."""
    reg.unregister(FEATURE_GROUP)


def _flags_from_args(args: Namespace) -> dict[str, bool]:
    return {flag: bool(getattr(args, flag, False)) for flag in FEATURE_FLAGS}


def enable_feature_patches_from_args(args: Namespace, device: str | None = None,
                                     reg: PatchRegistry = registry) -> list[str]:
    """:func:`enable_feature_patches` from a parsed argparse Namespace (missing flags count as off)."""
    flags = _flags_from_args(args)
    if flags["use_fused_swiglu"] and getattr(args, "swiglu", True) is False:
        raise ValueError("--use-fused-swiglu needs --swiglu (a gated SiLU MLP); "
                         "add --swiglu or drop the flag")
    position = getattr(args, "position_embedding_type", "rope")
    if flags["use_fused_rotary_pos_emb"] and position not in ("rope", "yarn", "mrope"):
        raise ValueError(
            f"--use-fused-rotary-pos-emb needs rotary embeddings, got --position-embedding-type {position}"
        )
    context_parallel = int(getattr(args, "context_parallel_size", 1) or 1) > 1
    chunked = getattr(args, "loss_compute_mode", "default") == "chunk"
    return enable_feature_patches(**flags, device=device, reg=reg, context_parallel=context_parallel,
                                  loss_chunk_size=args.loss_chunk_size if chunked else None)


def transformer_config_overrides(use_fused_swiglu: bool = False, **_: Any) -> dict[str, Any]:
    """``TransformerConfig`` fields the feature flags need: ``--use-fused-swiglu`` routes megatron's
    MLP through ``bias_swiglu_impl`` only with ``bias_activation_fusion=True``."""
    return {"bias_activation_fusion": True} if use_fused_swiglu else {}
