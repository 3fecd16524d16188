"""LoRA adapters on megatron-core's tensor-parallel linear layers, and :func:`apply_lora` (adapt + freeze).

A targeted ``ColumnParallelLinear`` / ``RowParallelLinear`` of the built ``GPTModel`` becomes an instance of
a subclass that adds ``lora_A`` (r x in) and ``lora_B`` (out x r) and returns ``base(x) + B(A(dropout(x)))
* alpha / r``, peft's LoRA. The base layer keeps its state-dict keys (``linear_qkv.weight``); the adapter
adds ``linear_qkv.lora_A.weight`` and ``linear_qkv.lora_B.weight``.

Each rank's A and B are cut from the whole factors by the TP rule of ``lora/tp.py`` (the one conversion
uses). The reductions that rule needs (see docs/lora.md):

- column-parallel layer: ``A x`` is computed on every rank; the gradient flowing back into it is summed
  over TP (``copy_to_tensor_model_parallel_region``).
- row-parallel layer: the rank-r partial products ``A_i x_i`` are summed over TP once (an all-reduce of an
  r-wide tensor) before B, so B sees the full ``A x`` and its gradient needs no reduction.

With ``--sequence-parallel`` the all-reduces become megatron's all-gather / reduce-scatter along the
sequence, and the whole factor (column A, row B) is marked ``sequence_parallel`` so that
``finalize_model_grads`` sums its gradient over TP, as it does for the norms.
"""

from __future__ import annotations

import hashlib
import math

import torch

from mindspeed_llm.lora.config import LoraConfig, check_moe_targets
from mindspeed_llm.lora.keys import is_lora_key
from mindspeed_llm.lora.tp import factor_splits, is_column_parallel, partition_dim, shard_adapter


def initial_a(shape: tuple[int, int], seed: int, layer: int, module: str) -> torch.Tensor:
    """peft's default A (kaiming-uniform with a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), whole, float32.

    Drawn from its own generator seeded by (seed, global layer, module), so every TP/PP layout starts alike.
    """
    digest = hashlib.sha256(f"{seed}/{layer}/{module}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).float()


class _Factor(torch.nn.Module):
    """One LoRA factor with a ``weight`` (so keys read ``lora_A.weight``, as in peft's files)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)


class _LoraMixin:
    """What the adapted linear layers share: the adapter's factors, scaling and dropout."""

    lora_scaling: float
    lora_dropout_p: float

    def _add_adapter(self, a: torch.Tensor, b: torch.Tensor, cfg: LoraConfig) -> None:
        self.lora_A = _Factor(a)
        self.lora_B = _Factor(b)
        self.lora_scaling = cfg.scaling
        self.lora_dropout_p = cfg.dropout

    def _dropout(self, x: torch.Tensor, split_input: bool) -> torch.Tensor:
        """peft's dropout on the adapter's input; a split input draws its mask from the TP rank's own RNG."""
        if not self.lora_dropout_p or not self.training:
            return x
        if split_input:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            with get_cuda_rng_tracker().fork():
                return torch.nn.functional.dropout(x, self.lora_dropout_p, True)
        return torch.nn.functional.dropout(x, self.lora_dropout_p, True)


def _tp_mappings():
    from megatron.core.tensor_parallel import mappings

    return mappings


class LoraColumnParallelLinear:
    """Mixed into a ``ColumnParallelLinear`` subclass: A whole, B split like the output."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        """The base layer's output plus ``B_i(A(x)) * scaling`` on this rank's output rows."""
        output, output_bias = super().forward(input_, weight=weight,
                                              runtime_gather_output=runtime_gather_output)
        m = _tp_mappings()
        h = torch.nn.functional.linear(self._dropout(input_, split_input=self.sequence_parallel),
                                       self.lora_A.weight)
        if self.sequence_parallel:
            h = m.gather_from_sequence_parallel_region(h, group=self.tp_group)
        else:
            h = m.copy_to_tensor_model_parallel_region(h, group=self.tp_group)
        delta = torch.nn.functional.linear(h, self.lora_B.weight) * self.lora_scaling
        gather = self.gather_output if runtime_gather_output is None else runtime_gather_output
        if gather:
            delta = m.gather_from_tensor_model_parallel_region(delta, group=self.tp_group)
        return output + delta, output_bias


class LoraRowParallelLinear:
    """Mixed into a ``RowParallelLinear`` subclass: A split like the input, B whole."""

    def forward(self, input_):
        """The base layer's output plus ``B(sum_i A_i(x_i)) * scaling``."""
        output, output_bias = super().forward(input_)
        m = _tp_mappings()
        x = input_
        if not self.input_is_parallel:
            x = m.scatter_to_tensor_model_parallel_region(input_, group=self.tp_group)
        h = torch.nn.functional.linear(self._dropout(x, split_input=True), self.lora_A.weight)
        if self.sequence_parallel:
            h = m.reduce_scatter_to_sequence_parallel_region(h, group=self.tp_group)
        else:
            h = m.reduce_from_tensor_model_parallel_region(h, group=self.tp_group)
        return output + torch.nn.functional.linear(h, self.lora_B.weight) * self.lora_scaling, output_bias


_CLASSES: dict[type, type] = {}


def _adapted_class(base_cls: type, column: bool) -> type:
    """``Lora<Base>`` (one per base class), subclassing the layer's own class."""
    if base_cls not in _CLASSES:
        mixin = LoraColumnParallelLinear if column else LoraRowParallelLinear
        _CLASSES[base_cls] = type(f"Lora{base_cls.__name__}", (mixin, _LoraMixin, base_cls), {})
    return _CLASSES[base_cls]


def _mark(param: torch.nn.Parameter, split_dim: int | None, sequence_parallel: bool) -> None:
    """megatron's TP attributes: split along ``split_dim`` or replicated (``sequence_parallel`` then)."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    split = split_dim is not None
    set_tensor_model_parallel_attributes(param, split, split_dim if split else -1, 1)
    if split_dim is None and sequence_parallel:
        param.sequence_parallel = True


def adapt_linear(module: torch.nn.Module, name: str, layer_number: int, cfg: LoraConfig) -> None:
    """Turn one megatron linear layer into its LoRA subclass, in place (weights and keys unchanged).

    The whole A (peft's initial values) and B (zeros) are cut for this TP rank by :func:`shard_adapter`.
    """
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    tp_rank = ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0
    whole_a = initial_a((cfg.r, module.input_size), cfg.seed, layer_number, name)
    whole_b = torch.zeros(module.output_size, cfg.r)
    a, b = shard_adapter(name, whole_a, whole_b, tp)[tp_rank]
    column = is_column_parallel(name)
    module.__class__ = _adapted_class(type(module), column)
    like_base = {"device": module.weight.device, "dtype": module.weight.dtype}
    module._add_adapter(a.to(**like_base), b.to(**like_base), cfg)
    sp = bool(getattr(module, "sequence_parallel", False))
    a_split, b_split = factor_splits(name)
    _mark(module.lora_A.weight, partition_dim(a_split), sp)
    _mark(module.lora_B.weight, partition_dim(b_split), sp)


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> int:
    """Add adapters to every targeted linear layer of a GPTModel chunk and freeze everything else.

    Returns the number of adapted layers. Call before DDP wraps the model: frozen parameters then get
    no gradient buffer and no optimizer state.
    """
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.transformer_layer import TransformerLayer

    adapted = 0
    for layer in model.modules():
        if not isinstance(layer, TransformerLayer):
            continue
        for sub_name, sub in layer.named_modules():
            short = sub_name.rsplit(".", 1)[-1]
            if short not in cfg.target_modules or isinstance(sub, _LoraMixin):
                continue
            if not isinstance(sub, ColumnParallelLinear | RowParallelLinear):
                raise TypeError(f"--lora-target-modules {short}: {sub_name} is a {type(sub).__name__}, "
                                "not a megatron parallel linear layer")
            check_moe_targets([short], layer.config.num_moe_experts)  # the experts take no adapter
            adapt_linear(sub, short, layer.layer_number, cfg)
            adapted += 1
    freeze_all_but_adapters(model)
    return adapted


def freeze_all_but_adapters(model: torch.nn.Module) -> None:
    """Only the adapter factors train: every other parameter gets ``requires_grad=False``."""
    for name, param in model.named_parameters():
        param.requires_grad = is_lora_key("." + name)
