"""One-GPU device check: ops against their torch references, logits parity, train + resume, MFU.

    python bench/device_check.py                    # one CUDA GPU, ~8 minutes at most
    python bench/device_check.py --dry-run          # the same code paths on the CPU at tiny sizes
    make device-check

Rows of the table it prints (fails with one line on a machine without CUDA, unless --dry-run):

1. **ops**: each op's path for this device against its torch reference, forward and backward, in fp32
   and bf16: attention (``flash_attention``, causal GQA), RoPE, RMSNorm, SwiGLU, megatron's
   vocab-parallel cross entropy as the patch layer leaves it, and Adam (torch's fused kernel, which
   the patch layer switches megatron's fallback to) against the per-parameter reference loop.
   **ring kernel**: ring attention's local kernel with log-sum-exp (CUDA: torch's memory-efficient kernel,
   opt-in ``kernel='cuda_efficient'``; dry run: the CPU flash kernel) against the blockwise kernel, the
   ring's CUDA default: forward, log-sum-exp and backward, fp32 and bf16, and their times.
2. **logits**: a random Qwen2.5-shaped HF model (transformers) converted by convert_ckpt.py; both
   forward the same tokens on the device in fp32 (``mindspeed_llm.convert.verify``'s model build).
3. **train + resume**: pretrain_gpt.py under torchrun (1 process) for 6 iterations saving at 3, then
   resumed from 3: iterations 4-6 must repeat.
4. **throughput**: a Qwen2.5-1.5B-shaped model (hidden 1536, 12 heads / 2 KV groups, SwiGLU 8960,
   vocabulary 151936, tied) in bf16 at sequence 4096, micro-batch 1, random init, flash attention and
   the fused kernels, for a few steps; tokens/s and MFU (model FLOPs / the GPU's dense bf16 peak, from
   ``--peak-tflops`` or a table of known GPUs). ``--layers`` reduces the 28 layers when memory or time
   demands (the table says how many ran).

Results go to stdout as a markdown table; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 peak TFLOP/s (no sparsity), by substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "B200": 2250.0,
    "GB200": 2500.0,
}
QWEN25_1_5B = dict(layers=28, hidden=1536, heads=12, groups=2, ffn=8960, vocab=151936, tied=True)
_ITER = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)"
                   r"(?:.*?throughput \(tokens/s/device\): ([0-9.]+))?(?:.*?TFLOP/s/device: ([0-9.]+))?"
                   r".*?lm loss: ([0-9.E+-]+) \|")


@dataclass
class Row:
    check: str
    ok: bool
    measured: str
    seconds: float


# ---- 1. ops ------------------------------------------------------------------------------------------------
def _rel(actual, expected) -> float:

    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))


def _fwd_bwd(fn, inputs):
    """Output and input gradients of ``fn`` with a fixed random upstream gradient."""
    import torch

    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    gen = torch.Generator(device="cpu").manual_seed(7)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
    out.backward(upstream)
    return out, [x.grad for x in leaves if x.requires_grad]


def _compare(name, fn, ref, inputs, dtype, tol) -> Row:
    """``fn`` on the device in ``dtype`` vs ``ref`` in float64 on the CPU: worst relative error of
    output/grads."""
    import torch

    t0 = time.time()
    dev_in = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    out, grads = _fwd_bwd(fn, dev_in)
    ref_in = [x.detach().cpu().double() if x.is_floating_point() else x.cpu() for x in inputs]
    ref_out, ref_grads = _fwd_bwd(ref, ref_in)
    errs = [_rel(out, ref_out)] + [_rel(g, r) for g, r in zip(grads, ref_grads)]
    worst = max(errs)
    return Row(
        f"op {name} {str(dtype).replace('torch.', '')}",
        worst <= tol and torch.isfinite(out).all().item(),
        f"max rel err {worst:.1e} (tol {tol:.0e})",
        time.time() - t0,
    )


def check_ops(device: str, tiny: bool) -> list[Row]:
    """Every op's path for ``device`` against its torch reference, fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    from mindspeed_llm.ops.attention_kernels import attention_math, flash_attention
    from mindspeed_llm.ops.rmsnorm import rms_norm, rms_norm_reference
    from mindspeed_llm.ops.rope import apply_rotary_pos_emb, rotary_reference
    from mindspeed_llm.ops.swiglu import swiglu, swiglu_reference

    b, n, g, s, d = (1, 4, 2, 64, 32) if tiny else (2, 12, 2, 2048, 128)
    hidden, vocab = (64, 512) if tiny else (1536, 151936)
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, k, v = rnd(b, n, s, d), rnd(b, g, s, d), rnd(b, g, s, d)
    inv = 1.0 / (1000000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.outer(torch.arange(s, dtype=torch.float64), inv)
    freqs = torch.cat((ang, ang), -1)[:, None, None, :].float().to(device)
    x_rope = rnd(s, b, n, d)
    x_norm, w_norm = rnd(b * s, hidden), (1 + 0.1 * rnd(hidden))
    x_glu = rnd(b * s, 2 * hidden)
    logits = rnd(b * (s // 4), vocab)
    target = torch.randint(0, vocab, (b * (s // 4),), generator=gen).to(device)

    def ce_device(lg, tg):
        from megatron.core import tensor_parallel

        return tensor_parallel.vocab_parallel_cross_entropy(lg[None].contiguous(), tg[None])[0]

    def ce_reference(lg, tg):
        return F.cross_entropy(lg, tg, reduction="none")

    rows = []
    cases = [
        ("attention", lambda a, b_, c: flash_attention(a, b_, c, causal=True),
         lambda a, b_, c: attention_math(a, b_, c, causal=True), [q, k, v]),
        ("rope", lambda t: apply_rotary_pos_emb(t, freqs.to(t.dtype) if t.dtype == torch.float64 else freqs),
         lambda t: rotary_reference(t, freqs.cpu().double()), [x_rope]),
        ("rmsnorm", lambda x, w: rms_norm(x, w, 1e-6), lambda x, w: rms_norm_reference(x, w, 1e-6),
         [x_norm, w_norm]),
        ("swiglu", swiglu, swiglu_reference, [x_glu]),
        ("cross entropy", ce_device, ce_reference, [logits, target]),
    ]
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        for name, fn, ref, inputs in cases:
            if name == "cross entropy" and dtype == torch.bfloat16:
                tol = 1e-2  # the loss is float32 math on bf16 logits
            rows.append(_compare(name, fn, ref, inputs, dtype, tol))
    rows.append(check_fused_adam(device, tiny))
    return rows


def _ring_block(kernel: str, q, k, v, dout, causal: bool, device: str):
    """(out, lse, grads, seconds) of one ring block's forward + backward with ``kernel``; the second of two
    runs."""
    import torch

    from mindspeed_llm.ops.context_parallel_kernels import attention_with_lse, attention_with_lse_backward

    kw = dict(causal=causal, scale=q.shape[-1] ** -0.5, kernel=kernel)
    for _ in range(2):  # the first run warms the kernel up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.time()
        out, lse = attention_with_lse(q, k, v, **kw)
        grads = attention_with_lse_backward(dout, q, k, v, out, lse, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
    return out, lse, grads, time.time() - start


def check_ring_kernel(device: str, tiny: bool) -> list[Row]:
    """Ring attention's local kernel with log-sum-exp on this device against the blockwise kernel.

    CUDA: torch's memory-efficient kernel (``kernel='cuda_efficient'``, opt-in until this row passes on a
    GPU); the CPU dry run: torch's CPU flash kernel (the CPU ring's default). Blocks as the ring runs them:
    causal square, and a non-causal chunk of queries against twice its keys; GQA; forward (out, lse) and the
    backward given the merged out / lse; fp32 and bf16; the time of both kernels (forward + backward).
    """
    import torch

    kernel = "cuda_efficient" if device == "cuda" else "cpu_flash"
    b, n, g, s, d = (1, 4, 2, 64, 32) if tiny else (1, 12, 2, 4096, 128)
    gen = torch.Generator().manual_seed(3)
    rows = []
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        for causal, sq in ((True, s), (False, s // 2)):
            t0 = time.time()
            q = torch.randn(b, n, sq, d, generator=gen).to(device, dtype)
            k, v = (torch.randn(b, g, s, d, generator=gen).to(device, dtype) for _ in range(2))
            dout = torch.randn(b, n, sq, d, generator=gen).to(device, dtype)
            out, lse, grads, secs = _ring_block(kernel, q, k, v, dout, causal, device)
            ref_out, ref_lse, ref_grads, ref_secs = _ring_block("blockwise", q, k, v, dout, causal, device)
            errs = [_rel(out, ref_out), _rel(lse, ref_lse)] + [_rel(x, r) for x, r in zip(grads, ref_grads)]
            worst = max(errs)
            label = f"ring kernel {kernel} {'causal' if causal else 'chunk x 2 chunks'} {str(dtype)[6:]}"
            rows.append(Row(label, worst <= tol, f"max rel err vs blockwise {worst:.1e} (tol {tol:.0e}); "
                            f"fwd+bwd {secs:.3f} s vs blockwise {ref_secs:.3f} s",
                            time.time() - t0))
    return rows


def check_fused_adam(device: str, tiny: bool) -> Row:
    """torch's fused AdamW on the device (what the patch layer selects) vs the per-parameter loop, 5 steps."""
    import torch

    from mindspeed_llm.ops.fused_adam import use_fused_adam

    t0 = time.time()
    gen = torch.Generator().manual_seed(1)
    shapes = [(64, 32), (32,), (128, 64)] if tiny else [(4096, 1536), (1536,), (8960, 1536)]
    init = [torch.randn(*sh, generator=gen) for sh in shapes]
    grads = [[torch.randn(*sh, generator=gen) for sh in shapes] for _ in range(5)]
    fused = [torch.nn.Parameter(p.clone().to(device)) for p in init]
    ref = [torch.nn.Parameter(p.clone().double()) for p in init]
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt = torch.optim.AdamW(fused, **kw)
    switched = use_fused_adam(opt)
    opt_ref = torch.optim.AdamW(ref, foreach=False, **kw)
    for step in grads:
        for p, g_ in zip(fused, step):
            p.grad = g_.to(device)
        for p, g_ in zip(ref, step):
            p.grad = g_.double()
        opt.step()
        opt_ref.step()
    # The update each parameter received (fused vs the float64 reference loop), not the weights themselves.
    worst = max(_rel(a.detach().double().cpu() - b0.double(), b.detach() - b0.double())
                for a, b, b0 in zip(fused, ref, init))
    ok = switched > 0 and worst < 5e-4  # fp32 vs float64 over 5 steps (CPU: ~5e-5)
    return Row(
        "op fused adam fp32", ok, f"update rel err {worst:.1e} (fused groups {switched})", time.time() - t0
    )


# ---- 2. logits parity --------------------------------------------------------------------------------------
def make_hf(folder: Path, *, layers: int, hidden: int, heads: int, groups: int, ffn: int, vocab: int) -> Path:
    """A random Qwen2 HF folder (fp32) made by transformers."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=groups, max_position_embeddings=4096,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    return folder


def _logits_parity(device: str, work: Path, tiny: bool) -> Row:
    import torch
    from transformers import AutoModelForCausalLM

    from mindspeed_llm.convert.convert import ConvertOptions, convert
    from mindspeed_llm.convert.sources import model_config_from_args
    from mindspeed_llm.models.builder import build_gpt_model
    from mindspeed_llm.runtime.checkpoint.layout import load_rank_state

    t0 = time.time()
    shape = dict(layers=2, hidden=64, heads=4, groups=2, ffn=128, vocab=256) if tiny else \
        dict(layers=4, hidden=896, heads=14, groups=2, ffn=4864, vocab=151936)  # Qwen2.5-0.5B widths
    hf = make_hf(work / "parity_hf", **shape)
    mg = work / "parity_mg"
    convert(ConvertOptions(load_model_type="hf", save_model_type="mg", load_dir=str(hf), save_dir=str(mg),
                           add_qkv_bias=True, progress=False))
    state = load_rank_state(mg, None, 0, 0, 1)
    cfg = model_config_from_args(state["args"]).replace(params_dtype=torch.float32)
    model = build_gpt_model(cfg, padded_vocab_size=state["args"].padded_vocab_size, pre_process=True,
                            post_process=True, parallel_output=False, use_cpu_initialization=True,
                            perform_initialization=False, tensor_model_parallel_size=1,
                            pipeline_model_parallel_size=1)
    model.load_state_dict(state["model"], strict=True)
    model = model.to(device).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager")
    ref = ref.to(device).eval()
    s = 64 if tiny else 512
    tokens = torch.randint(0, shape["vocab"], (1, s), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        want = ref(tokens).logits.float()
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=device), diagonal=1)[None, None]
        got = model(tokens, torch.arange(s, device=device)[None], attention_mask=causal).float()[
            ..., : shape["vocab"]
        ]
    diff = float((got - want).abs().max())
    return Row(
        "logits vs transformers fp32", diff < 1e-3, f"max |dlogit| {diff:.1e} (s={s})", time.time() - t0
    )


# ---- 3/4. training runs ------------------------------------------------------------------------------------
def make_data(prefix: Path, vocab: int, tokens: int) -> str:
    """Random documents ending in EOD (= vocab - 1), int32 above 65500 ids."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab < 65500 else np.int32
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    done = 0
    while done < tokens:
        n = int(rng.integers(200, 3000))
        ids = np.append(rng.integers(0, vocab - 1, n), vocab - 1).astype(np.int64)
        builder.add_document(torch.from_numpy(ids), [len(ids)])
        done += len(ids)
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def model_flags(
    layers: int, hidden: int, heads: int, groups: int, ffn: int, vocab: int, tied: bool
) -> list[str]:
    """Megatron flags of a Qwen2.5-shaped model with a NullTokenizer of ``vocab`` ids."""
    flags = [
        "--use-mcore-models",
        "--num-layers",
        layers,
        "--hidden-size",
        hidden,
        "--ffn-hidden-size",
        ffn,
        "--num-attention-heads",
        heads,
        "--group-query-attention",
        "--num-query-groups",
        groups,
        "--position-embedding-type",
        "rope",
        "--rotary-base",
        1000000,
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        "1e-6",
        "--swiglu",
        "--disable-bias-linear",
        "--add-qkv-bias",
        "--attention-dropout",
        0.0,
        "--hidden-dropout",
        0.0,
        "--make-vocab-size-divisible-by",
        1,
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        vocab - 1,
        "--seed",
        1234,
        "--log-interval",
        1,
        "--eval-iters",
        0,
        "--num-workers",
        0,
        "--split",
        "100,0,0",
    ]
    if not tied:
        flags.append("--untie-embeddings-and-output-weights")
    return [str(f) for f in flags]


def torchrun(args: list[str], log: Path, timeout: int) -> str:
    """pretrain_gpt.py under torchrun with one process; its stdout (raises with the log path on failure)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        str(REPO / "pretrain_gpt.py"),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    log.write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode:
        tail = [line for line in (proc.stderr + proc.stdout).splitlines() if "error" in line.lower()][-1:]
        raise RuntimeError(
            f"pretrain_gpt.py failed ({proc.returncode}): {tail[0] if tail else ''} [log: {log}]"
        )
    return proc.stdout


def check_resume(work: Path, tiny: bool, timeout: int) -> Row:
    """6 iterations saving at 3, then resumed from 3: iterations 4-6 must repeat the unbroken run's losses."""
    import shutil

    t0 = time.time()
    shape = dict(layers=2, hidden=64, heads=4, groups=2, ffn=128, vocab=256, tied=False) if tiny else \
        dict(layers=4, hidden=512, heads=8, groups=2, ffn=1408, vocab=32000, tied=False)
    seq = 64 if tiny else 1024
    data = make_data(work / "resume_data" / "corpus_text_document", shape["vocab"], 40 * seq * 4)
    save = work / "resume_save"
    flags = model_flags(**shape) + [
        "--data-path",
        data,
        "--seq-length",
        seq,
        "--max-position-embeddings",
        seq,
        "--micro-batch-size",
        2,
        "--global-batch-size",
        4,
        "--train-iters",
        6,
        "--lr",
        1e-3,
        "--min-lr",
        1e-4,
        "--lr-warmup-iters",
        1,
        "--clip-grad",
        1.0,
        "--weight-decay",
        0.1,
        "--save",
        save,
        "--save-interval",
        3,
    ]
    flags = [str(f) for f in flags] + ([] if tiny else ["--bf16", "--use-flash-attn", "--use-fused-rmsnorm",
                                                         "--use-fused-swiglu", "--use-fused-rotary-pos-emb"])
    unbroken = {
        int(m[1]): m[5] for m in _ITER.finditer(torchrun(flags, work / "resume_unbroken.log", timeout))
    }
    at3 = work / "resume_at3"
    shutil.copytree(save / "iter_0000003", at3 / "iter_0000003")
    (at3 / "latest_checkpointed_iteration.txt").write_text("3")
    flags[flags.index("--save") + 1] = str(work / "resume_save2")
    resumed = {int(m[1]): m[5] for m in _ITER.finditer(torchrun(flags + ["--load", str(at3)],
                                                                 work / "resume_resumed.log", timeout))}
    want = {it: v for it, v in unbroken.items() if it > 3}
    if want and resumed == want:
        return Row("train 6 its + save + resume", True, "iterations 4-6 equal", time.time() - t0)
    # GPU attention backward kernels may accumulate in a varying order: say so instead of failing on it.
    same_its = bool(want) and sorted(resumed) == sorted(want)
    worst = max((abs(float(resumed[i]) - float(want[i])) / abs(float(want[i])) for i in want), default=1.0) \
        if same_its else 1.0
    ok = same_its and worst <= 2e-3
    detail = (f"iterations 4-6 within {worst:.1e} (not bitwise: nondeterministic kernels)" if ok
              else f"unbroken {want} vs resumed {resumed}")
    return Row("train 6 its + save + resume", ok, detail, time.time() - t0)


def check_throughput(work: Path, tiny: bool, layers: int | None, steps: int, peak: float | None,
                     timeout: int) -> Row:
    """Qwen2.5-1.5B shape, bf16, sequence 4096 (tiny: 2 layers, hidden 64, sequence 256): tokens/s and MFU."""
    import statistics

    t0 = time.time()
    shape = dict(QWEN25_1_5B)
    seq = 4096
    if tiny:
        shape.update(layers=2, hidden=64, heads=4, groups=2, ffn=128, vocab=512)
        seq = 256
    if layers:
        shape["layers"] = layers
    data = make_data(work / "mfu_data" / "corpus_text_document", shape["vocab"], (steps + 2) * seq * 2)
    flags = model_flags(**shape) + [str(f) for f in [
        "--data-path", data, "--seq-length", seq, "--max-position-embeddings", seq, "--micro-batch-size", 1,
        "--global-batch-size", 1, "--train-iters", steps, "--lr", 1e-4, "--bf16", "--log-throughput",
        "--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu", "--use-fused-rotary-pos-emb"]]
    out = torchrun(flags, work / "mfu.log", timeout)
    rows = [(float(m[2]), float(m[3] or 0), float(m[4] or 0)) for m in _ITER.finditer(out)]
    timed = rows[2:] or rows  # the first steps warm up (allocator, kernels)
    tokens = statistics.median(r[1] for r in timed)
    tflops = statistics.median(r[2] for r in timed)
    mfu = f", MFU {100 * tflops / peak:.1f}% of {peak:.0f}" if peak else ""
    label = f"throughput {shape['layers']}L h{shape['hidden']} seq {seq} bf16"
    ok = bool(rows) and tokens > 0
    return Row(
        label, ok, f"{tokens:.0f} tokens/s, {tflops:.3g} TFLOP/s{mfu} ({len(timed)} steps)", time.time() - t0
    )


# ---- main --------------------------------------------------------------------------------------------------
def peak_tflops(device: str, given: float | None) -> float | None:
    """The GPU's dense bf16 peak: ``--peak-tflops`` or the table, by device name."""
    if given or device != "cuda":
        return given
    import torch

    name = torch.cuda.get_device_name()
    return next(
        (v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None
    )


def init_one_rank(device: str) -> None:
    """A one-rank process group and megatron's parallel state (the cross-entropy check reduces over TP)."""
    import torch
    from megatron.core import parallel_state as ps

    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        torch.distributed.init_process_group(
            backend, store=torch.distributed.HashStore(), rank=0, world_size=1
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(1234)  # megatron's RNG tracker, which building a model forks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="same code paths on the CPU at tiny sizes")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="cpu implies --dry-run sizes")
    p.add_argument("--layers", type=int, default=None, help="layers of the throughput model (default 28)")
    p.add_argument("--steps", type=int, default=6, help="throughput steps (the first 2 are warm-up)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)"
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    opts = p.parse_args(argv)
    device = opts.device or ("cpu" if opts.dry_run else "cuda")
    tiny = device == "cpu"
    os.environ["MINDSPEED_LLM_DEVICE"] = device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("error: device_check needs a CUDA GPU and torch.cuda.is_available() is False here; "
              "run with --dry-run to exercise the same code paths on the CPU", file=sys.stderr)
        return 2
    import mindspeed_llm

    mindspeed_llm.apply_base_patches(device)
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="device_check_"))
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run, tiny sizes)"
    print(f"device check on {name}; torch {torch.__version__}; work folder {work}", flush=True)
    start = time.time()
    init_one_rank(device)
    rows: list[Row] = []
    run_limit = 150 if not tiny else 300

    def attempt(label: str, fn) -> None:
        t0 = time.time()
        try:
            got = fn()
        except Exception as exc:  # noqa: BLE001 - one failed check is a row, the others still run
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            got = [Row(label, False, f"{type(exc).__name__}: {first}"[:160], time.time() - t0)]
        rows.extend(got if isinstance(got, list) else [got])
        print(f"  {label}: done in {time.time() - t0:.1f} s", flush=True)

    attempt("ops", lambda: check_ops(device, tiny))
    attempt("ring kernel", lambda: check_ring_kernel(device, tiny))
    attempt("logits", lambda: _logits_parity(device, work, tiny))
    attempt("train + resume", lambda: check_resume(work, tiny, run_limit))
    attempt("throughput", lambda: check_throughput(work, tiny, opts.layers, opts.steps,
                                                   peak_tflops(device, opts.peak_tflops), run_limit + 90))
    print("\n| check | result | measured | s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row.check} | {'PASS' if row.ok else 'FAIL'} | {row.measured} | {row.seconds:.1f} |")
    print(f"\ntotal {time.time() - start:.0f} s on {name}")
    if opts.json:
        opts.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    import mindspeed_llm

    mindspeed_llm.freeze_heap_at_exit()  # no collections over torch's modules at exit
    sys.exit(main())
