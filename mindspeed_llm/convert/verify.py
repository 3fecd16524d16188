"""``--verify``: logits of transformers' model vs our megatron-core model built from a legacy checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from mindspeed_llm.convert.convert import ConvertOptions, build_stage, check_parallel
from mindspeed_llm.convert.errors import VerificationError, VerificationUnavailable
from mindspeed_llm.convert.sources import open_mg_source
from mindspeed_llm.models.builder import build_gpt_model
from mindspeed_llm.models.families import ModelConfig

DEFAULT_TOLERANCE = 1e-4


def verify_tokens(cfg: ModelConfig, num_tokens: int = 16, seed: int = 1234) -> torch.Tensor:
    """A fixed token sequence [1, num_tokens] inside the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (1, num_tokens), generator=gen)


def _memory_needed(cfg: ModelConfig) -> int:
    h, f, layers = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers
    per_layer = 4 * h * h + 3 * h * f
    if cfg.num_experts:  # every expert, the shared one and the router
        per_layer += 3 * h * cfg.moe_ffn_hidden_size * cfg.num_experts + h * cfg.num_experts
        per_layer += 3 * h * (cfg.moe_shared_expert_intermediate_size or 0)
    params = layers * per_layer + 2 * cfg.vocab_size * h
    return params * 4 * 3  # HF fp32 + megatron fp32 + merged state dict in transit


def _available_memory() -> int:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        return 1 << 62


def weights_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The dtype both sides' weights are rounded to before computing in float32 (the narrower one)."""
    return b if a == torch.float32 else a


def hf_logits(hf_dir: str, ids: torch.Tensor, *, round_to: torch.dtype = torch.float32) -> torch.Tensor:
    """float32 logits of transformers' model (eager attention), weights rounded to ``round_to`` first."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=round_to, attn_implementation="eager").float()
    model.eval()
    with torch.no_grad():
        return model(ids).logits[0].float()


def _ensure_single_process_parallel_state() -> bool:
    """Initialise gloo + megatron-core parallel state for one process; True if we created the group."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        created = True
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
        from megatron.core import tensor_parallel

        # megatron's attention forks this RNG tracker even without dropout (CPU: our device layer backs it).
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    return created


def megatron_logits(
    mg_root: str,
    ids: torch.Tensor,
    *,
    hf_dir: str | None = None,
    iteration: int | str | None = None,
    round_to: torch.dtype = torch.float32,
) -> torch.Tensor:
    """float32 logits of our megatron-core model with the checkpoint's weights merged to TP1/PP1."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    source = open_mg_source(mg_root, iteration=iteration, hf_dir=hf_dir)
    cfg = source.cfg.replace(params_dtype=torch.float32)
    counts = check_parallel(cfg, 1, 1, None)
    state = build_stage(source, cfg, tp=1, pp=1, counts=counts, pp_rank=0, padded=source.padded_vocab_size,
                        dtype=round_to)[0]
    state = {k: v.float() if v is not None else None for k, v in state.items()}
    source.close()
    created = _ensure_single_process_parallel_state()
    try:
        model = build_gpt_model(cfg, padded_vocab_size=source.padded_vocab_size, pre_process=True,
                                post_process=True, parallel_output=False, use_cpu_initialization=True,
                                perform_initialization=False, tensor_model_parallel_size=1,
                                pipeline_model_parallel_size=1)
        model.load_state_dict(state, strict=True)
        del state
        model.eval()
        seq = ids.shape[1]
        position_ids = torch.arange(seq).unsqueeze(0)
        causal_mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[
            None, None
        ]  # True = masked
        with torch.no_grad():
            logits = model(ids, position_ids, attention_mask=causal_mask)
        return logits[0, :, : cfg.vocab_size].float()
    finally:
        ps.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


def verify_checkpoint(
    hf_dir: str,
    mg_root: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    num_tokens: int = 16,
    iteration: int | str | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """Max |Δlogit| between the HF folder and the Megatron checkpoint; raises above ``tolerance``.

    Raises :class:`VerificationUnavailable` when the machine has too little memory to hold both models.
    """
    source = open_mg_source(mg_root, iteration=iteration, hf_dir=hf_dir)
    cfg = source.cfg
    source.close()
    cfg.check_sequence_length(num_tokens, "--verify-tokens")  # a longer sequence would differ from HF here
    hf_dtype = ModelConfig.from_hf_config(hf_dir).params_dtype
    round_to = weights_dtype(hf_dtype, source.dtype)  # e.g. fp32 HF converted with --params-dtype bf16
    need, have = _memory_needed(cfg), _available_memory()
    if need > have:
        raise VerificationUnavailable(
            f"holding both models in float32 needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB "
            "available: run it on a machine with more memory "
            "(mindspeed_llm.convert.verify.verify_checkpoint)"
        )
    ids = verify_tokens(cfg, num_tokens)
    ref = hf_logits(hf_dir, ids, round_to=round_to)
    ours = megatron_logits(mg_root, ids, hf_dir=hf_dir, iteration=iteration, round_to=round_to)
    diff = (ref - ours).abs().max().item()
    log(f"verify: max |Δlogit| = {diff:.3e} over {num_tokens} tokens (tolerance {tolerance:.0e}) "
        f"between {os.path.abspath(hf_dir)} and {os.path.abspath(mg_root)}")
    if not diff <= tolerance:
        raise VerificationError(
            f"--verify failed: max |Δlogit| {diff:.3e} > {tolerance:.0e}: the converted checkpoint does not "
            "reproduce the HF model"
        )
    return diff


def verify_resharded(
    src_root: str,
    dst_root: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    num_tokens: int = 16,
    iteration: int | str | None = None,
    hf_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """mg->mg: logits of the source and the resharded checkpoint (both merged to TP1/PP1) must agree."""
    source = open_mg_source(src_root, iteration=iteration, hf_dir=hf_dir)
    ids = verify_tokens(source.cfg, num_tokens)
    source.close()
    target = open_mg_source(dst_root, hf_dir=hf_dir)
    round_to = weights_dtype(source.dtype, target.dtype)
    target.close()
    a = megatron_logits(src_root, ids, hf_dir=hf_dir, iteration=iteration, round_to=round_to)
    b = megatron_logits(dst_root, ids, hf_dir=hf_dir, round_to=round_to)
    diff = (a - b).abs().max().item()
    log(f"verify: max |Δlogit| = {diff:.3e} between source {src_root} and resharded {dst_root}")
    if not diff <= tolerance:
        raise VerificationError(
            f"--verify failed: max |Δlogit| {diff:.3e} > {tolerance:.0e} after resharding"
        )
    return diff


def verify_after_convert(opts: ConvertOptions, written: str, *, tolerance: float = DEFAULT_TOLERANCE,
                         num_tokens: int = 16, log: Callable[[str], None] = print) -> float:
    """Pick the HF folder and Megatron checkpoint of a finished conversion and verify them."""
    if opts.load_model_type == "mg" and opts.save_model_type == "mg":
        return verify_resharded(opts.load_dir, written, tolerance=tolerance, num_tokens=num_tokens,
                                iteration=opts.iteration, hf_dir=opts.hf_dir, log=log)
    if opts.save_model_type == "mg":
        hf_dir, mg_root = opts.load_dir, written
    else:
        hf_dir, mg_root = written, opts.load_dir
    if not hf_dir or not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise VerificationUnavailable(
            f"no HF folder to compare with ({hf_dir or 'none given'} holds no config.json)"
        )
    return verify_checkpoint(hf_dir, mg_root, tolerance=tolerance, num_tokens=num_tokens,
                             iteration=opts.iteration if opts.save_model_type == "hf" else None, log=log)
