"""Mixture-of-experts kernels: megatron-core's grouped GEMM contract and router gating without Transformer
Engine or the ``grouped_gemm`` package.

megatron-core 0.16.1's ``GroupedMLP`` (the ``--moe-grouped-gemm`` layout of the local spec) keeps every local
expert's weights in one parameter (``weight1``: ``[hidden, experts * ffn(*2 gated)]``, ``weight2``:
``[experts * ffn, hidden]``) and multiplies the tokens sorted by expert with ``grouped_gemm.ops.gmm(a, b,
batch_sizes, trans_b)``: ``a`` is ``[sum(batch_sizes), k]``, ``b`` is ``[experts, k, n]`` (``[experts, n, k]``
with ``trans_b``), row block ``i`` of ``a`` is multiplied by ``b[i]``. That package is CUDA-only (CUTLASS) and
is not installed here; :func:`grouped_gemm` is the same contract on every device:

- CUDA: the ``grouped_gemm`` package when installed, else one product per expert;
- CPU: ``torch._grouped_mm`` (one call for every expert, forward and backward) where its 16-byte stride
  rule holds (fp32 and bf16, both matrix sizes a multiple of 16 bytes); it gives the per-expert products bit
  for bit (tests/ops/test_moe.py) at about 1.4x their speed. Other shapes, and NPU: one product per expert
  (autograd through ``torch.mm``). bf16 on a CPU without bf16 matrix instructions multiplies in fp32 and
  rounds once (:mod:`.bf16_matmul`'s reasoning).

:func:`grouped_mlp_forward` is ``GroupedMLP.forward`` on this kernel, without megatron's bf16-only assertion
(the fp32 parity runs need fp32) and with the activation in eager torch (megatron's is ``torch.compile``d,
which needs a C++ compiler on the CPU). :func:`router_gating_linear` is megatron's router projection without
Transformer Engine: megatron-core 0.16.1 refers to ``te_general_gemm`` there even when TE is absent (a
``NameError``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mindspeed_llm.ops.bf16_matmul import native_bf16_matmul


def _cuda_grouped_gemm():
    try:
        import grouped_gemm  # noqa: F401 - optional CUDA package (megatron's GroupedMLP kernel)
    except ImportError:
        return None
    return grouped_gemm.ops.gmm


def _grouped_mm_fits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` takes ``a`` and ``b`` on the CPU: fp32 or bf16, and every dimension and
    non-unit stride a multiple of 16 bytes (its rule; the backward's products need the same of both sizes)."""
    if a.device.type != "cpu" or not hasattr(torch, "_grouped_mm") or a.dtype != b.dtype or (
            a.dtype not in (torch.float32, torch.bfloat16)):
        return False
    align = 16 // a.element_size()
    sizes = (a.shape[-1], *b.shape[-2:])
    strides = (*a.stride(), *b.stride())
    return all(n % align == 0 for n in sizes) and all(s % align == 0 for s in strides if s != 1)


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor | list[int],
                 trans_b: bool = False) -> torch.Tensor:
    """``grouped_gemm.ops.gmm``: row block ``i`` of ``a`` (``batch_sizes[i]`` rows) times ``b[i]`` (or its
    transpose with ``trans_b``), concatenated; differentiable."""
    if a.is_cuda:
        kernel = _cuda_grouped_gemm()
        if kernel is not None:
            return kernel(a, b, batch_sizes, trans_b=trans_b)
    sizes = batch_sizes.tolist() if torch.is_tensor(batch_sizes) else list(batch_sizes)
    if len(sizes) != b.shape[0]:
        raise ValueError(f"grouped_gemm: {len(sizes)} batch sizes for {b.shape[0]} expert weights")
    upcast = a.dtype is torch.bfloat16 and a.device.type == "cpu" and not native_bf16_matmul()
    out_dtype = a.dtype
    if upcast:
        a, b = a.float(), b.float()
    if _grouped_mm_fits(a, b):
        offsets = torch.tensor(sizes, dtype=torch.int64).cumsum(0).to(torch.int32)
        out = torch._grouped_mm(a, b.transpose(-2, -1) if trans_b else b, offs=offsets)
    else:
        outs = [x @ (w.t() if trans_b else w) for x, w in zip(torch.split(a, sizes), b.unbind(0))]
        out = torch.cat(outs) if outs else a.new_empty(0, b.shape[1] if trans_b else b.shape[2])
    return out.to(out_dtype) if upcast else out


class GroupedGemmOps:
    """Stands in for ``grouped_gemm.ops`` in megatron's ``grouped_gemm_util.ops``."""

    gmm = staticmethod(grouped_gemm)


def router_gating_linear(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         router_dtype: torch.dtype) -> torch.Tensor:
    """megatron's ``router_gating_linear`` without TE: ``inp @ weight.T (+ bias)`` in ``router_dtype``;
    the input's gradient comes back in its own dtype, the weight's in the weight's."""
    return F.linear(inp.to(router_dtype), weight.to(router_dtype),
                    None if bias is None else bias.to(router_dtype))


def _activation_with_probs(module, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    config = module.config
    if config.gated_linear_unit:
        gate, up = torch.chunk(x, 2, dim=-1)
        y = config.activation_func(gate) * up
    else:
        y = config.activation_func(x)
    return (y * probs).to(x.dtype)


def grouped_mlp_forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                        permuted_probs: torch.Tensor):
    """``GroupedMLP.forward`` of megatron-core 0.16.1 on :func:`grouped_gemm`, in any dtype (tracks that
    version's body: probabilities applied on the input for top-1 if configured, else after the activation;
    an empty batch still touches every weight so that each expert gets a gradient)."""
    if self.config.moe_apply_probs_on_input:
        if self.config.moe_router_topk != 1:
            raise ValueError("moe_apply_probs_on_input needs moe_router_topk == 1")
        dtype = permuted_local_hidden_states.dtype
        permuted_local_hidden_states = (permuted_probs.unsqueeze(-1) * permuted_local_hidden_states).to(dtype)
        permuted_probs = torch.ones_like(permuted_probs)
    probs = permuted_probs.unsqueeze(-1)
    if permuted_local_hidden_states.nelement() != 0:
        w1 = self.weight1.view(self.num_local_experts, self.config.hidden_size, -1)
        w2 = self.weight2.view(self.num_local_experts, -1, self.config.hidden_size)
        fc1 = grouped_gemm(permuted_local_hidden_states, w1, tokens_per_expert)
        fc2 = grouped_gemm(_activation_with_probs(self, fc1, probs), w2, tokens_per_expert)
    else:
        w1 = self.weight1.view(self.config.hidden_size, -1)
        w2 = self.weight2.view(-1, self.config.hidden_size)
        h = _activation_with_probs(self, permuted_local_hidden_states @ w1, probs)
        fc2 = h @ w2
    return fc2, None


def _is_gloo(group) -> bool:
    import torch.distributed as dist

    return dist.get_backend(group) == "gloo"


def uneven_all_gather(input_: torch.Tensor, group, output_split_sizes: list[int]) -> torch.Tensor:
    """Gather ``input_`` (``output_split_sizes[rank]`` rows) from every rank of ``group`` along dim 0.

    gloo's all_gather needs equal sizes: each rank sends its rows padded to the largest size."""
    import torch.distributed as dist

    sizes = [int(n) for n in output_split_sizes]
    largest = max(sizes)
    padded = input_.new_zeros(largest, *input_.shape[1:])
    padded[: input_.shape[0]] = input_
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(gathered, sizes)])


def uneven_reduce_scatter(input_: torch.Tensor, group, input_split_sizes: list[int]) -> torch.Tensor:
    """Sum ``input_`` over ``group`` and keep this rank's block of rows (``input_split_sizes``).

    gloo has no reduce_scatter of uneven blocks: an all-reduce of the whole tensor, then this rank's rows."""
    import torch.distributed as dist

    total = input_.contiguous().clone()
    dist.all_reduce(total, group=group)
    sizes = [int(n) for n in input_split_sizes]
    start = sum(sizes[: group.rank()])
    return total[start:start + sizes[group.rank()]].contiguous()


def assert_grouped_gemm_available() -> None:
    """megatron's ``assert_grouped_gemm_is_available``: :func:`grouped_gemm` runs on every device."""
