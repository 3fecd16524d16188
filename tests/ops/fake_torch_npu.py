"""A stand-in for ``torch_npu`` in tests: there is no Ascend hardware (or CANN) on this machine."""

from __future__ import annotations

import torch

from mindspeed_llm.ops.attention import attention_math
from mindspeed_llm.ops.rmsnorm import rms_norm_reference
from mindspeed_llm.ops.swiglu import swiglu_reference


class FakeTorchNpuForTests:
    """Stands in for the absent Ascend hardware: implements the four torch_npu ops the NPU paths call,
    with torch_npu's documented signatures, by recording every call's arguments (and, for the norm and
    SwiGLU, what it returned) in ``calls`` and computing the result with the torch reference. It checks
    plumbing, not NPU numerics: tests assert what the NPU path passes in and hands back, never that the
    fake's own result equals the reference it was computed from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def last(self, name: str) -> dict:
        matches = [kwargs for op, kwargs in self.calls if op == name]
        assert matches, f"{name} was not called; calls: {[op for op, _ in self.calls]}"
        return matches[-1]

    def npu_fusion_attention(self, query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                             atten_mask=None, scale=1.0, keep_prob=1.0, pre_tockens=2147483647,
                             next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
                             actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
                             softmax_layout=""):
        self.calls.append(("npu_fusion_attention", dict(
            query=query, key=key, value=value, head_num=head_num, input_layout=input_layout,
            atten_mask=atten_mask, scale=scale, keep_prob=keep_prob, sparse_mode=sparse_mode,
            pre_tockens=pre_tockens, next_tockens=next_tockens, actual_seq_qlen=actual_seq_qlen,
            actual_seq_kvlen=actual_seq_kvlen)))
        if input_layout == "TND":
            return self._varlen_tnd(query, key, value, atten_mask, scale, keep_prob, actual_seq_qlen,
                                    actual_seq_kvlen, sparse_mode, next_tockens)
        if input_layout == "SBH":
            s, b, h = query.shape
            d = h // head_num
            q = query.view(s, b, head_num, d).permute(1, 2, 0, 3)
            k = key.view(key.shape[0], b, -1, d).permute(1, 2, 0, 3)
            v = value.view(value.shape[0], b, -1, d).permute(1, 2, 0, 3)
        elif input_layout == "BNSD":
            q, k, v = query, key, value
        else:
            raise NotImplementedError(f"fake supports SBH, BNSD and TND, got {input_layout}")
        sq, sk = q.shape[2], k.shape[2]
        if sparse_mode == 2:  # leftUpCausal: the compressed 2048x2048 mask stands for the causal mask
            assert atten_mask is not None and atten_mask.shape == (2048, 2048)
            mask = torch.triu(torch.ones(sq, sk, dtype=torch.bool), diagonal=1)
        else:
            assert sparse_mode == 0
            mask = atten_mask
        assert keep_prob == 1.0, "the fake computes no dropout"
        out = attention_math(q, k, v, attn_mask=mask, softmax_scale=scale)
        if input_layout == "SBH":
            out = out.permute(2, 0, 1, 3).reshape(sq, b, -1)
        empty = torch.empty(0)
        return out, empty, empty, empty, 0, 0, 0

    @staticmethod
    def _varlen_tnd(query, key, value, atten_mask, scale, keep_prob, actual_seq_qlen, actual_seq_kvlen,
                    sparse_mode, next_tockens):
        """TND ([tokens, heads, dim]): each segment ending at ``actual_seq_qlen[i]`` (cumulative ends, as
        torch_npu documents them) attends to itself; band mode 4 with ``next_tockens=0`` is causal."""
        assert actual_seq_qlen == actual_seq_kvlen and isinstance(actual_seq_qlen, list)
        assert actual_seq_qlen[-1] == query.shape[0], "the last cumulative end must be the token count"
        assert sparse_mode == 4 and next_tockens == 0 and atten_mask.shape == (2048, 2048)
        assert keep_prob == 1.0, "the fake computes no dropout"
        out = torch.empty(query.shape[0], query.shape[1], value.shape[2], dtype=query.dtype)
        start = 0
        for end in actual_seq_qlen:
            q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
            out[start:end] = attention_math(q, k, v, causal=True, softmax_scale=scale)[0].transpose(0, 1)
            start = end
        empty = torch.empty(0)
        return out, empty, empty, empty, 0, 0, 0

    def npu_rms_norm(self, x, gamma, epsilon=1e-06):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
        returned = (rms_norm_reference(x, gamma, epsilon), rstd)
        self.calls.append(("npu_rms_norm", dict(x=x, gamma=gamma, epsilon=epsilon, returned=returned)))
        return returned

    def npu_rotary_mul(self, input, r1, r2, rotary_mode="half", rotate=None):
        self.calls.append(("npu_rotary_mul", dict(input=input, r1=r1, r2=r2, rotary_mode=rotary_mode)))
        assert rotary_mode == "half"
        # r1 = cos, r2 = sin: recover the angles the reference takes.
        return input * r1 + torch.cat((-input[..., input.shape[-1] // 2:], input[..., : input.shape[-1] // 2]), -1) * r2

    def npu_swiglu(self, x, dim=-1):
        assert dim == -1
        returned = swiglu_reference(x)
        self.calls.append(("npu_swiglu", dict(x=x, dim=dim, returned=returned)))
        return returned

