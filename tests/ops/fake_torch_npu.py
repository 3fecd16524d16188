"""A stand-in for ``torch_npu`` in tests: there is no Ascend hardware (or CANN) on this machine."""

from __future__ import annotations

import torch

from mindspeed_llm.ops.attention_kernels import attention_math
from mindspeed_llm.ops.rmsnorm import rms_norm_reference
from mindspeed_llm.ops.swiglu import swiglu_reference


class FakeTorchNpuForTests:
    """Stands in for the absent Ascend hardware: implements the torch_npu ops the NPU paths call,
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
        empty = torch.empty(0)
        if input_layout == "SBH":
            return out.permute(2, 0, 1, 3).reshape(sq, b, -1), empty, empty, empty, 0, 0, 0
        # BNSD: softmax_max / softmax_sum per row, repeated 8 times along the last dim as torch_npu returns
        # them.
        scores = self._scores(q, k, mask, scale)
        smax = scores.amax(-1, keepdim=True)
        ssum = torch.exp(scores - smax).sum(-1, keepdim=True)
        return (
            out,
            smax.expand(*smax.shape[:3], 8).float(),
            ssum.expand(*ssum.shape[:3], 8).float(),
            empty,
            0,
            0,
            0,
        )

    @staticmethod
    def _scores(q, k, mask, scale):
        """Masked scaled scores ``[b, n_q, s_q, s_k]`` in float64 (K heads repeated for GQA)."""
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q.double() @ k.double().transpose(-1, -2)) * scale
        return scores if mask is None else scores.masked_fill(mask, float("-inf"))

    def npu_fusion_attention_grad(
        self,
        query,
        key,
        value,
        dy,
        head_num,
        input_layout,
        *,
        pse=None,
        padding_mask=None,
        atten_mask=None,
        softmax_max=None,
        softmax_sum=None,
        softmax_in=None,
        attention_in=None,
        scale_value=1.0,
        keep_prob=1.0,
        pre_tockens=2147483647,
        next_tockens=2147483647,
        inner_precise=0,
        seed=0,
        offset=0,
        numels=0,
        prefix=None,
        actual_seq_qlen=None,
        actual_seq_kvlen=None,
        sparse_mode=0,
        gen_mask_parallel=True,
        sync=False,
    ):
        """BNSD only: flash backward from the given softmax statistics, ``p = exp(s - max) / sum``, and the
        forward output ``attention_in`` (``D = rowsum(dy * attention_in)``), as torch_npu documents the op."""
        self.calls.append(
            (
                "npu_fusion_attention_grad",
                dict(
                    query=query,
                    key=key,
                    value=value,
                    dy=dy,
                    head_num=head_num,
                    input_layout=input_layout,
                    atten_mask=atten_mask,
                    softmax_max=softmax_max,
                    softmax_sum=softmax_sum,
                    attention_in=attention_in,
                    scale_value=scale_value,
                    keep_prob=keep_prob,
                    sparse_mode=sparse_mode,
                ),
            )
        )
        assert input_layout == "BNSD" and keep_prob == 1.0
        sq, sk = query.shape[2], key.shape[2]
        mask = atten_mask
        if sparse_mode == 2:
            assert atten_mask is not None and atten_mask.shape == (2048, 2048)
            mask = torch.triu(torch.ones(sq, sk, dtype=torch.bool), diagonal=1)
        else:
            assert sparse_mode == 0
        rep = query.shape[1] // key.shape[1]
        k, v = (t.double().repeat_interleave(rep, dim=1) for t in (key, value))
        p = torch.exp(self._scores(query, key, mask, scale_value) - softmax_max[..., :1].double())
        p = p / softmax_sum[..., :1].double()
        do = dy.double()
        dv = p.transpose(-1, -2) @ do
        dp = do @ v.transpose(-1, -2)
        ds = p * (dp - (do * attention_in.double()).sum(-1, keepdim=True)) * scale_value
        dq = ds @ k
        dk = ds.transpose(-1, -2) @ query.double()
        b, n_kv = key.shape[:2]
        dk, dv = (t.view(b, n_kv, rep, sk, -1).sum(2) for t in (dk, dv))
        return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), torch.empty(0)

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
        return (
            input * r1
            + torch.cat((-input[..., input.shape[-1] // 2 :], input[..., : input.shape[-1] // 2]), -1) * r2
        )

    def npu_swiglu(self, x, dim=-1):
        assert dim == -1
        returned = swiglu_reference(x)
        self.calls.append(("npu_swiglu", dict(x=x, dim=dim, returned=returned)))
        return returned

