"""megatron-core's inference pieces off CUDA, and a static KV cache of rotated keys (group ``inference``,
applied by inference.py).

megatron-core 0.16.1's ``inference/communication_utils`` asserts ``tensor.is_cuda`` before it
broadcasts from the last pipeline stage; on the CPU (and on NPUs, whose tensors are not CUDA
tensors) the check becomes "on the device this process computes on".

Its static KV cache (``StaticInferenceContext``, unless ``flash_decode``) stores keys *before* RoPE:
``Attention._adjust_key_value_for_inference`` writes the new keys into the cache and hands back the
whole cached prefix with the angles of all its positions, and ``Attention.forward`` then rotates that
prefix again, at every decode step in every layer (a step at 512 tokens of context rotates 512
positions' keys to compute one). The wrapper here rotates the new positions' query and keys (the same
angles: in the static path both are the positions being computed), stores the keys rotated, and hands
back no angles, so the forward rotates nothing more and the cached keys stay as they are. RoPE acts on
each position on its own, so attention sees the same numbers. It acts only under a static inference
context with RoPE (never in training, nor on the dynamic or flash-decode paths, which already cache
rotated keys).

The same wrapper allocates each layer's cache on its first call, in megatron's shape [positions, batch,
groups, head dim] but stored [batch, groups, positions, head dim] (a permuted view). megatron's layout
puts a group's consecutive positions ``batch x groups x head dim`` floats apart, and a decode step's
attention, which reads every cached position of every group, ran 2.3x slower on those strided views
(CPU SDPA, 512 cached positions, batch 4: 658 against 286 us per call); in this layout each group's
positions are one block, as transformers' static cache keeps them. megatron's writes (the new positions)
and reads (the prefix) are the same slicing of the view; its own core attention merges batch and heads
with ``view``, which the layout allows.

A decode step is a few small matrix products per layer, so per-call overhead shows: with gradients
off (``torch.inference_mode``, as inference.py generates) megatron's column/row-parallel linear runs
its forward math (the same ``matmul`` and bias add) without the autograd function around it, which
exists only to save inputs for backward, and the tensor-parallel region entries and exits are their
forwards (the input itself; the all-reduce; the logits' all-gather: nothing at TP 1). With sequence
parallelism (an all-gather in the linear's forward) or gradients on, megatron's own functions run.

The largest cost of a decode step is not Python but the linears' products of a few rows by a large
weight (the output layer alone is half of the step at hidden 256, vocabulary 32000): MKL runs
``input @ weight.t()`` faster when ``weight.t()`` is contiguous. ``lay_out_weights_for_decode``,
which the generator calls once on its model, stores the CPU weights that way: the same values and
shape, swapped strides. Training never calls it.
"""

from __future__ import annotations

import functools

import torch

from mindspeed_llm.patches.registry import PatchRegistry

GROUP = "inference"
_IS_CUDA = "megatron.core.inference.communication_utils._is_cuda"
_ADJUST_KV = "megatron.core.transformer.attention.Attention._adjust_key_value_for_inference"
_LINEAR = "megatron.core.tensor_parallel.layers.linear_with_grad_accumulation_and_async_allreduce"
_COPY_TO_TP = "megatron.core.tensor_parallel.mappings.copy_to_tensor_model_parallel_region"
_REDUCE_FROM_TP = "megatron.core.tensor_parallel.mappings.reduce_from_tensor_model_parallel_region"
_GATHER_FROM_TP = "megatron.core.tensor_parallel.mappings.gather_from_tensor_model_parallel_region"


def _on_device(device: str):
    """megatron's ``_is_cuda`` check for ``device``: the tensor exists and lives there."""

    def is_on_device(tensor: torch.Tensor) -> None:
        assert tensor is not None
        assert tensor.device.type == device, f"expected a {device} tensor, got one on {tensor.device}"

    return is_on_device


def _caches_rotated_keys(attention, context, rotary_pos_emb) -> bool:
    """Whether this call is the static-batching, RoPE, non-flash-decode inference path the patch changes."""
    return (context is not None and not attention.training and context.is_static_batching()
            and not attention.config.flash_decode and isinstance(rotary_pos_emb, tuple)
            and rotary_pos_emb[0] is not None and rotary_pos_emb[1] is not None)


def _rotated_key_cache(original):
    """``_adjust_key_value_for_inference`` that caches keys rotated at their own positions."""
    import megatron.core.transformer.attention as attention_module

    def adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                       rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                                       sequence_len_offset=None, *, inference_params=None):
        context = inference_context if inference_context is not None else inference_params
        if not _caches_rotated_keys(self, context, rotary_pos_emb):
            return original(self, inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos,
                            rotary_pos_sin, rotary_pos_cos_sin, sequence_len_offset,
                            inference_params=inference_params)
        if self.layer_number not in context.key_value_memory_dict:
            context.key_value_memory_dict[self.layer_number] = (_cache_memory(context, key),
                                                                _cache_memory(context, value))
        start = context.sequence_len_offset
        query = _rotate(self, query, rotary_pos_emb[0][start: start + query.size(0)])
        key = _rotate(self, key, rotary_pos_emb[1][start: start + key.size(0)])
        query, key, value, _, mask_type, block_table = original(
            self, context, query, key, value, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
            rotary_pos_cos_sin, sequence_len_offset)
        return query, key, value, None, mask_type, block_table  # None: query and keys are rotated

    def _rotate(attention, t, freqs):
        """megatron's RoPE of ``t`` at ``freqs`` (looked up at call time: --use-fused-rotary-pos-emb's)."""
        return attention_module.apply_rotary_pos_emb(
            t, freqs, config=attention.config, cu_seqlens=None,
            mscale=attention_module._yarn_get_concentration_factor_from_config(attention.config),
            cp_group=attention.pg_collection.cp)

    return adjust_key_value_for_inference


def _cache_memory(context, t: torch.Tensor) -> torch.Tensor:
    """One layer's static cache of keys or values like ``t`` ([positions, batch, groups, head dim]):
    megatron's shape [max positions, max batch, groups, head dim], stored [batch, groups, positions, head
    dim] (a permuted view). Attention reads the cache as [batch, groups, positions, head dim]: this way
    each group's cached positions lie one after the other, as SDPA reads them, not a batch row apart."""
    memory = torch.empty(context.max_batch_size, t.size(2), context.max_sequence_length, t.size(3),
                         dtype=t.dtype, device=t.device)
    return memory.permute(2, 0, 1, 3)


def _linear_without_autograd(original):
    """megatron's parallel linear that, with gradients off and no sequence parallelism, is its forward."""

    @functools.wraps(original)  # with its attributes: megatron's body reads and sets its own ``.warned``
    def linear(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, *args,
               **kwargs):
        if torch.is_grad_enabled() or sequence_parallel:
            return original(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad,
                            sequence_parallel, *args, **kwargs)
        output = torch.matmul(input, weight.t())  # megatron's forward: matmul, then the bias
        return output + bias if bias is not None else output

    return linear


def _copy_without_autograd(original):
    """megatron's entry to a tensor-parallel region: with gradients off its forward, the input itself."""

    @functools.wraps(original)
    def copy_to_tensor_model_parallel_region(input_, group=None):
        return original(input_, group) if torch.is_grad_enabled() else input_

    return copy_to_tensor_model_parallel_region


def _forward_without_autograd(forward_name: str):
    """A wrapper factory: megatron's ``*_tensor_model_parallel_region`` that, with gradients off, is its
    autograd function's forward (``mappings.<forward_name>(input, group)``)."""

    def wrapper(original):
        from megatron.core.tensor_parallel import mappings
        from megatron.core.utils import get_tensor_model_parallel_group_if_none

        @functools.wraps(original)
        def region(input_, group=None):
            if torch.is_grad_enabled():
                return original(input_, group)
            return getattr(mappings, forward_name)(input_, get_tensor_model_parallel_group_if_none(group))

        return region

    return wrapper


def _linear_weights(model: torch.nn.Module):
    """The 2-D weights ``model``'s column/row-parallel linears multiply by (the output layer's shared
    embedding weight included), each once."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    seen = set()
    for module in model.modules():
        linear = isinstance(module, (ColumnParallelLinear, RowParallelLinear))
        weight = getattr(module, "weight", None) if linear else None
        if weight is None and getattr(module, "share_embeddings_and_output_weights", False) \
                and getattr(module, "post_process", False):
            weight = module.shared_embedding_or_output_weight()
        if weight is not None and weight.dim() == 2 and id(weight) not in seen:
            seen.add(id(weight))
            yield weight


def lay_out_weights_for_decode(model: torch.nn.Module) -> int:
    """Store each linear weight of ``model`` transposed in memory (same values, same shape); returns how many.

    megatron's linears compute ``input @ weight.t()``. With ``weight.t()`` contiguous, MKL's products
    of a few rows (a decode step: one row per sequence) run faster: 1.7x for an output layer of hidden
    256 x vocabulary 32000 at batch 4, 1.3x for an 11008 x 4096 MLP weight; prefill is unchanged
    (docs/performance_journal.md). The values and the shape stay, so the state dict, the TP shards and every
    op that reads the weight see the same tensor; the generator lays out its model this way once. Only
    CPU weights: the gain is MKL's, and an accelerator's BLAS was not measured with this layout. Each
    weight is copied once, one at a time (the memory of the largest weight, transiently).
    """
    count = 0
    with torch.no_grad():
        for weight in _linear_weights(model):
            if weight.device.type == "cpu" and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()
                count += 1
    return count


_REGION_SIGNATURE = "(input_, group=None)"


def register_inference_patches(registry: PatchRegistry, device: str) -> None:
    """Register (not apply) the inference group for ``device`` (the broadcast check only off CUDA)."""
    r = functools.partial(registry.register, group=GROUP)
    r(_ADJUST_KV, wrapper=_rotated_key_cache,
      signature="(self, inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos=None, "
                "rotary_pos_sin=None, rotary_pos_cos_sin=None, sequence_len_offset=None, *, "
                "inference_params=None)",
      relies_on={"megatron.core.transformer.attention.apply_rotary_pos_emb":
                 "(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None)",
                 "megatron.core.transformer.attention._yarn_get_concentration_factor_from_config":
                 "(config)"},
      description="the static KV cache holds rotated keys; each step rotates its new ones (private method)")
    r(_LINEAR, wrapper=_linear_without_autograd,
      signature="(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, "
                "grad_output_buffer=None, wgrad_deferral_limit=0, async_grad_allreduce=None, tp_group=None)",
      description="parallel linear without its autograd function when gradients are off")
    r(_COPY_TO_TP, wrapper=_copy_without_autograd, signature=_REGION_SIGNATURE,
      description="TP region entry without its autograd function when gradients are off")
    r(_REDUCE_FROM_TP, wrapper=_forward_without_autograd("_reduce"), signature=_REGION_SIGNATURE,
      relies_on={"megatron.core.tensor_parallel.mappings._reduce": "(input_, group)",
                 "megatron.core.utils.get_tensor_model_parallel_group_if_none":
                 "(tp_group, is_expert=False, check_initialized=True)"},
      description="TP region exit (all-reduce) without its autograd function when gradients are off")
    r(_GATHER_FROM_TP, wrapper=_forward_without_autograd("_gather_along_last_dim"),
      signature=_REGION_SIGNATURE,
      relies_on={"megatron.core.tensor_parallel.mappings._gather_along_last_dim": "(input_, group)",
                 "megatron.core.utils.get_tensor_model_parallel_group_if_none":
                 "(tp_group, is_expert=False, check_initialized=True)"},
      description="TP logits gather without its autograd function when gradients are off")
    if device != "cuda":
        r(_IS_CUDA, _on_device(device), signature="(tensor)",
          description="inference broadcasts accept tensors of the compute device (private check: is_cuda)")


def enable_inference_patches(registry: PatchRegistry, device: str) -> list[str]:
    """Apply the inference group for ``device`` (the broadcast check only off CUDA); returns the targets."""
    targets = [_ADJUST_KV, _LINEAR, _COPY_TO_TP, _REDUCE_FROM_TP, _GATHER_FROM_TP]
    targets += [] if device == "cuda" else [_IS_CUDA]
    if not registry.patches(GROUP):
        register_inference_patches(registry, device)
    registry.apply(GROUP)
    return targets
