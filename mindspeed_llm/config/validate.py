"""Validation of a launch: the flags against each other and the world size, completed where they leave a value
open.

This is the only module that assigns attributes of the parsed namespace
(``tests/config/test_namespace_writes.py`` holds the rest of the package to it). What it writes are flags:
defaults that depend on other flags (``--ffn-hidden-size`` from ``--hidden-size``, ``--global-batch-size``
from the world, ...), Megatron-LM's ``args_defaults``, and the values ``--use-checkpoint-args`` takes from the
checkpoint. Values derived from the world and the checkpoint (data-parallel size, micro-batches, padded
vocabulary, ...) are the plan's (``config/plan.py``); the layout rules are checked here with the plan's own
functions, before the process group.

Torch-free: ``check_command_line`` refuses a bad launch before the heavy imports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mindspeed_llm.config import plan
from mindspeed_llm.config.flags import (
    CONTEXT_PARALLEL_ALGOS,
    ArgumentError,
    parse_args,
    sampling_flags_given,
)
from mindspeed_llm.config.paths import check_paths, split_data_path
from mindspeed_llm.console import launch_rank, print_error
from mindspeed_llm.data.chat_templates import PROMPT_TYPES
from mindspeed_llm.dpo.config import STAGES as DPO_STAGES
from mindspeed_llm.dpo.config import check_dpo_flags
from mindspeed_llm.from_hf.config import FromHfError, check_from_hf_flags
from mindspeed_llm.lora.config import check_lora_flags
from mindspeed_llm.models.names import LAYER_SPECS


def apply_defaults(args: argparse.Namespace, defaults: Mapping[str, Any] | None) -> argparse.Namespace:
    """Megatron-LM's ``args_defaults``: each value where the launch left the flag unset (None)."""
    for key, value in (defaults or {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def take_checkpoint_values(args: argparse.Namespace, values: Mapping[str, Any]) -> argparse.Namespace:
    """--use-checkpoint-args: the values ``load_args_from_checkpoint`` chose from the checkpoint (before
    validation)."""
    for name, value in values.items():
        setattr(args, name, value)
    return args


def validate_args(args: argparse.Namespace, world_size: int, check=None) -> argparse.Namespace:
    """Check the flags against each other and the world size, and complete them; returns ``args``.

    ``check`` replaces :func:`check_args` (another entry's rules, e.g. :func:`check_inference_args`).
    """
    (check or check_args)(args, world_size)
    return args


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = ["--" + n.replace("_", "-") for n in names if getattr(args, n) is None]
    if missing:
        raise ArgumentError(f"missing required flag(s): {' '.join(missing)}")


def _check_context_parallel(args: argparse.Namespace) -> None:
    """--context-parallel-size / --context-parallel-algo: what ring and Ulysses attention support."""
    cp, algo = args.context_parallel_size, args.context_parallel_algo
    if cp < 1:
        raise ArgumentError(f"--context-parallel-size must be >= 1, got {cp}")
    if algo not in CONTEXT_PARALLEL_ALGOS:
        raise ArgumentError(
            f"--context-parallel-algo {algo} is not known: use megatron_cp_algo, ulysses_cp_algo "
            "or hybrid_cp_algo"
        )
    if args.ulysses_degree_in_cp is not None and algo != "hybrid_cp_algo":
        raise ArgumentError(
            f"--ulysses-degree-in-cp is for --context-parallel-algo hybrid_cp_algo, not {algo}: "
            "drop it or use hybrid_cp_algo"
        )
    if cp == 1:
        return
    if algo == "hybrid_cp_algo":
        _check_hybrid_degree(cp, args.ulysses_degree_in_cp)
    if args.seq_length % (2 * cp):
        raise ArgumentError(
            f"--seq-length {args.seq_length} must be divisible by 2 x --context-parallel-size {cp} "
            f"(each CP rank holds two of {2 * cp} equal chunks): use a multiple of {2 * cp}"
        )


def _check_hybrid_degree(cp: int, ulysses: int | None) -> None:
    """hybrid_cp_algo: --ulysses-degree-in-cp U splits the CP group into CP / U rings of U Ulysses ranks."""
    if ulysses is None:
        raise ArgumentError(
            f"--context-parallel-algo hybrid_cp_algo needs --ulysses-degree-in-cp U (U divides "
            f"--context-parallel-size {cp}, 1 < U < {cp})"
        )
    if ulysses <= 1 or ulysses >= cp or cp % ulysses:
        fix = ("use megatron_cp_algo" if ulysses == 1 else "use ulysses_cp_algo" if ulysses == cp
               else f"use a divisor of {cp} between 2 and {cp // 2}")
        raise ArgumentError(
            f"--ulysses-degree-in-cp {ulysses} with --context-parallel-size {cp}: hybrid_cp_algo "
            f"needs a divisor of the CP size strictly between 1 and {cp} (both Ulysses and ring "
            f"parts larger than 1); {fix}"
        )


def check_args(args: argparse.Namespace, world_size: int, *, training: bool = True) -> argparse.Namespace:
    """The training rules: the flags against each other and the world size; completes the flags left open.

    ``training`` False: the rules for a reader of the checkpoint (inference.py, evaluation.py), which
    runs the model without gradients (MoE at TP > 1 without sequence parallelism)."""
    _need(args, "num_layers", "hidden_size", "num_attention_heads", "seq_length", "lr")
    _check_training_length(args)
    if args.use_legacy_models:
        raise ArgumentError("--use-legacy-models is not supported: megatron-core models only (drop the flag)")
    if args.transformer_impl != "local":
        raise ArgumentError(
            "--transformer-impl transformer_engine is not supported: use --transformer-impl local "
            "(our patch layer provides the fused kernels)"
        )
    if args.use_rotary_position_embeddings:
        args.position_embedding_type = "rope"
    if args.position_embedding_type != "rope":
        raise ArgumentError(
            f"--position-embedding-type {args.position_embedding_type} is not supported: use rope"
        )
    if args.rotary_percent != 1.0:
        raise ArgumentError("--rotary-percent other than 1.0 is not supported")
    if args.normalization != "RMSNorm":
        raise ArgumentError("--normalization LayerNorm is not supported: use --normalization RMSNorm")
    if not args.swiglu:
        raise ArgumentError("only SwiGLU MLPs are supported: add --swiglu")
    if not args.disable_bias_linear:
        raise ArgumentError("linear biases are not supported (except QKV): add --disable-bias-linear "
                            "(and --add-qkv-bias for Qwen)")
    if args.fp16:
        raise ArgumentError("--fp16 is not supported: use --bf16 (or fp32, no flag)")
    if args.ckpt_format not in ("torch", "torch_dist"):
        raise ArgumentError(f"--ckpt-format {args.ckpt_format} is not supported: use --ckpt-format torch "
                            "(Megatron's legacy layout, what convert_ckpt.py writes) or torch_dist "
                            "(megatron-core's distributed checkpoint, Megatron-LM's default)")
    if args.ckpt_format == "torch_dist" and args.save and args.no_shared_storage:
        raise ArgumentError(
            "--ckpt-format torch_dist with --no-shared-storage: a distributed checkpoint is one "
            "folder written by every rank, so --save must be on storage all nodes share; use "
            "--ckpt-format torch"
        )
    try:
        check_lora_flags(args)
    except ValueError as exc:  # the LoRA module's own error type: one line like every refused launch
        raise ArgumentError(str(exc)) from None
    _take_from_hf_caches(args)
    _check_spec(args)
    if args.reuse_fp32_param and not (args.bf16 and args.use_distributed_optimizer):
        raise ArgumentError(
            "--reuse-fp32-param shares the bf16 parameters' memory with the distributed optimizer's "
            "fp32 copies: it needs --bf16 and --use-distributed-optimizer (MindSpeed-LLM's rule): add "
            "them or drop it"
        )
    try:
        check_dpo_flags(args)
    except ValueError as exc:  # the DPO module's own error type
        raise ArgumentError(str(exc)) from None
    if args.rampup_batch_size:
        raise ArgumentError("--rampup-batch-size is not supported: give a fixed --global-batch-size")
    _check_context_parallel(args)
    if args.dataloader_type is None:
        args.dataloader_type = "single"
    if args.dataloader_type != "single":
        raise ArgumentError(
            f"--dataloader-type {args.dataloader_type} is not supported: pretraining reads "
            "consecutive global batches in the dataset's (already shuffled) order; use single"
        )
    if args.loss_chunk_size < 1:
        raise ArgumentError(f"--loss-chunk-size must be a positive number of tokens, got "
                            f"{args.loss_chunk_size}")
    if args.loss_compute_mode == "chunk" and args.cross_entropy_loss_fusion:
        raise ArgumentError("--loss-compute-mode chunk and --cross-entropy-loss-fusion are two fusions of "
                            "the same loss: keep one")
    if args.manual_gc_interval < 0:
        raise ArgumentError(f"--manual-gc-interval must be >= 0, got {args.manual_gc_interval}")
    if args.exit_duration_in_mins is not None and args.exit_duration_in_mins <= 0:
        raise ArgumentError(f"--exit-duration-in-mins must be positive, got {args.exit_duration_in_mins}")
    _check_instruction_flags(args)
    if args.rope_scaling_type not in (None, "longrope") and args.rope_scaling_factor is None:
        raise ArgumentError(f"--rope-scaling-type {args.rope_scaling_type} needs --rope-scaling-factor")

    # Model shape.
    if args.ffn_hidden_size is None:
        # Megatron-LM's SwiGLU default: 2/3 of 4h, rounded up to a multiple of 64.
        args.ffn_hidden_size = ((int(4 * args.hidden_size * 2 / 3) + 63) // 64) * 64
    if args.kv_channels is None:
        if args.hidden_size % args.num_attention_heads:
            raise ArgumentError(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
                                f"{args.num_attention_heads}: give --kv-channels")
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if not args.group_query_attention:
        args.num_query_groups = args.num_attention_heads
    if args.num_attention_heads % args.num_query_groups:
        raise ArgumentError(f"--num-attention-heads {args.num_attention_heads} is not divisible by "
                            f"--num-query-groups {args.num_query_groups}")
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.seq_length > args.max_position_embeddings:
        raise ArgumentError(
            f"--seq-length {args.seq_length} is larger than --max-position-embeddings "
            f"{args.max_position_embeddings}: lower --seq-length or raise --max-position-embeddings"
        )
    if args.recompute_activations:
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full" and args.recompute_method is None:
        raise ArgumentError("--recompute-granularity full needs --recompute-method uniform|block "
                            "and --recompute-num-layers N")
    if args.recompute_method and args.recompute_num_layers is None:
        args.recompute_num_layers = 1

    # Parallel sizes.
    tp, pp, cp = (
        args.tensor_model_parallel_size,
        args.pipeline_model_parallel_size,
        args.context_parallel_size,
    )
    dp = plan.data_parallel_size(world_size, tp, pp, cp)
    if args.num_attention_heads % tp or args.num_query_groups % tp:
        raise ArgumentError(f"--num-attention-heads {args.num_attention_heads} and --num-query-groups "
                            f"{args.num_query_groups} must be divisible by --tensor-model-parallel-size {tp}")
    if cp > 1 and args.context_parallel_algo == "ulysses_cp_algo" and (args.num_attention_heads // tp) % cp:
        raise ArgumentError(
            f"--context-parallel-algo ulysses_cp_algo splits the attention heads of each TP rank "
            f"({args.num_attention_heads // tp}) over --context-parallel-size {cp}: they must divide "
            "evenly; use megatron_cp_algo or another CP size"
        )
    ulysses = args.ulysses_degree_in_cp
    if (
        cp > 1
        and args.context_parallel_algo == "hybrid_cp_algo"
        and (args.num_attention_heads // tp) % ulysses
    ):
        raise ArgumentError(
            f"--context-parallel-algo hybrid_cp_algo splits the attention heads of each TP rank "
            f"({args.num_attention_heads // tp}) over --ulysses-degree-in-cp {ulysses}: they must "
            "divide evenly; use a smaller --ulysses-degree-in-cp or megatron_cp_algo"
        )
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # Megatron-LM drops it silently at TP1; it means nothing there
    if args.no_pad_to_seq_lengths and args.sequence_parallel and args.pad_to_multiple_of % tp:
        raise ArgumentError(
            f"--pad-to-multiple-of {args.pad_to_multiple_of} with --sequence-parallel at "
            f"--tensor-model-parallel-size {tp}: micro-batch lengths must split evenly over the "
            f"TP ranks; use a multiple of {tp}, e.g. --pad-to-multiple-of {tp * 8}"
        )
    split = 2 * cp * (tp if args.sequence_parallel else 1)
    if cp > 1 and args.no_pad_to_seq_lengths and args.pad_to_multiple_of % split:
        raise ArgumentError(
            f"--pad-to-multiple-of {args.pad_to_multiple_of} with --context-parallel-size {cp}: "
            f"micro-batch lengths must split into {2 * cp} equal chunks per sequence"
            f"{' and over the TP ranks' if split > 2 * cp else ''}; use a multiple of {split}, "
            f"e.g. --pad-to-multiple-of {split * 8}"
        )
    _check_moe(args, world_size, training)
    _first_last_stage_layers(args, pp)
    plan.stage_layers(args.num_layer_list, args.num_layers, pp, args.num_layers_per_virtual_pipeline_stage)
    virtual = plan.virtual_stages(args.num_layers, pp, args.num_layers_per_virtual_pipeline_stage)

    # Batch sizes.
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    plan.micro_batches(args.global_batch_size, args.micro_batch_size, dp, world_size=world_size, tp=tp, pp=pp,
                       cp=cp, virtual=virtual)
    if args.train_samples is not None:
        args.train_iters = args.train_samples // args.global_batch_size  # Megatron-LM's update_train_iters

    # Precision: bf16 keeps fp32 main params (the plan's params_dtype) and reduces gradients in fp32.
    if args.bf16:
        args.accumulate_allreduce_grads_in_fp32 = True
    if args.overlap_param_gather and not args.use_distributed_optimizer:
        raise ArgumentError("--overlap-param-gather needs --use-distributed-optimizer")
    if args.overlap_param_gather and not args.overlap_grad_reduce:
        raise ArgumentError("--overlap-param-gather needs --overlap-grad-reduce")

    # Schedule (in samples when training is, see _check_training_length).
    if args.train_samples is None and args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.start_weight_decay is None:
        args.start_weight_decay = args.weight_decay
    if args.end_weight_decay is None:
        args.end_weight_decay = args.weight_decay
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ArgumentError(
            "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler contradict "
            "each other: give one (the launch's schedule, or the checkpoint's)"
        )
    if args.min_lr > args.lr:
        raise ArgumentError(f"--min-lr {args.min_lr} is larger than --lr {args.lr}")

    # Data and tokenizer.
    if args.tokenizer_type == "NullTokenizer":
        if args.vocab_size is None:
            raise ArgumentError("--tokenizer-type NullTokenizer needs --vocab-size N")
    else:
        args.tokenizer_name_or_path = args.tokenizer_name_or_path or args.tokenizer_model
        if not args.tokenizer_name_or_path:
            raise ArgumentError(f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-name-or-path "
                                "HF_MODEL_FOLDER (the folder with tokenizer.json)")
    sources = [bool(args.data_path), any([args.train_data_path, args.valid_data_path, args.test_data_path]),
               args.mock_data]
    if sum(sources) > 1:
        raise ArgumentError("give one data source: --data-path, or --train-data-path/--valid-data-path/"
                            "--test-data-path, or --mock-data")
    if not any(sources):
        raise ArgumentError("--data-path is required: the prefix preprocess_data.py printed, e.g. "
                            "./dataset/alpaca_text_document (or --mock-data for synthetic data)")

    # Checkpoints.
    if args.save_interval is None and args.save:
        args.save_interval = args.train_iters  # save once at the end
    if args.save_interval is not None and args.save_interval <= 0:
        raise ArgumentError(f"--save-interval must be positive, got {args.save_interval}")
    if args.exit_interval is not None and args.exit_interval <= 0:
        raise ArgumentError(f"--exit-interval must be positive, got {args.exit_interval}")
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise ArgumentError(f"--tensorboard-dir {args.tensorboard_dir} needs the tensorboard package: "
                            "pip install tensorboard, or drop the flag")
    return args


# Flags that mean something only with experts: (destination, its value when not given).
_MOE_ONLY_FLAGS = (
    ("expert_model_parallel_size", 1), ("moe_ffn_hidden_size", None),
    ("moe_shared_expert_intermediate_size", None), ("n_shared_experts", None),
    ("moe_shared_expert_gate", False),
    ("moe_grouped_gemm", False), ("first_k_dense_replace", None), ("norm_topk_prob", False),
    ("moe_router_pre_softmax", False), ("moe_aux_loss_coeff", 0.0), ("moe_z_loss_coeff", None),
)


def _check_moe(args: argparse.Namespace, world_size: int, training: bool = True) -> None:
    """Mixture-of-experts flags: MindSpeed-LLM's spellings folded into Megatron-LM's, the layout checked.

    megatron-core's MoE layer refuses TP > 1 without sequence parallelism in training only; in eval mode
    (inference.py, evaluation.py, which refuse sequence parallelism) every TP rank routes the whole
    sequence and the dispatcher's gather / reduce-scatter over TP sums the expert shards' partial outputs."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if not args.num_experts:
        given = ["--" + name.replace("_", "-") for name, unset in _MOE_ONLY_FLAGS
                 if getattr(args, name) != unset]
        if args.num_experts is not None:
            raise ArgumentError(f"--num-experts must be at least 1, got {args.num_experts}")
        if given:
            raise ArgumentError(f"{' '.join(given)} only apply to mixture-of-experts models: add "
                                "--num-experts N, or drop them")
        if args.expert_tensor_parallel_size not in (None, tp):
            raise ArgumentError("--expert-tensor-parallel-size only applies to mixture-of-experts models: "
                                "add --num-experts N, or drop it")
        args.expert_tensor_parallel_size = None
        return
    experts, ep = args.num_experts, args.expert_model_parallel_size
    if training and tp > 1 and not args.sequence_parallel:
        raise ArgumentError(f"--num-experts with --tensor-model-parallel-size {tp} needs --sequence-parallel "
                            "(megatron-core's MoE layer refuses TP without it): add --sequence-parallel")
    if not 1 <= args.moe_router_topk <= experts:
        raise ArgumentError(f"--moe-router-topk {args.moe_router_topk} must be between 1 and --num-experts "
                            f"{experts}")
    if ep < 1 or experts % ep:
        raise ArgumentError(f"--num-experts {experts} must be divisible by --expert-model-parallel-size {ep} "
                            "(each EP rank holds the same number of experts)")
    if args.moe_ffn_hidden_size is None:
        args.moe_ffn_hidden_size = args.ffn_hidden_size  # Megatron-LM's default
    if args.norm_topk_prob and args.moe_router_pre_softmax:
        raise ArgumentError("--norm-topk-prob renormalises the top-k probabilities, --moe-router-pre-softmax "
                            "keeps them as the softmax over all experts gave them: give one")
    if args.n_shared_experts is not None:
        if args.n_shared_experts < 1:
            raise ArgumentError(f"--n-shared-experts must be at least 1, got {args.n_shared_experts}")
        size = args.n_shared_experts * args.moe_ffn_hidden_size
        if args.moe_shared_expert_intermediate_size not in (None, size):
            raise ArgumentError(
                f"--n-shared-experts {args.n_shared_experts} x --moe-ffn-hidden-size "
                f"{args.moe_ffn_hidden_size} "
                f"= {size} contradicts --moe-shared-expert-intermediate-size "
                f"{args.moe_shared_expert_intermediate_size}: give one of them")
        args.moe_shared_expert_intermediate_size = size
    if args.moe_shared_expert_intermediate_size is not None and args.moe_shared_expert_intermediate_size < 1:
        raise ArgumentError("--moe-shared-expert-intermediate-size must be positive, got "
                            f"{args.moe_shared_expert_intermediate_size}")
    if args.moe_shared_expert_gate and args.moe_shared_expert_intermediate_size is None:
        raise ArgumentError("--shared-expert-gate gates a shared expert: add --n-shared-experts N or "
                            "--moe-shared-expert-intermediate-size SIZE")
    if args.moe_token_dispatcher_type == "alltoall_seq":
        args.moe_token_dispatcher_type = "alltoall"  # the same token exchange in megatron-core 0.16.1
    if args.moe_token_dispatcher_type == "flex":
        raise ArgumentError("--moe-token-dispatcher-type flex needs DeepEP/HybridEP kernels (CUDA only): use "
                            "alltoall or allgather")
    if args.moe_aux_loss_coeff < 0 or (args.moe_z_loss_coeff is not None and args.moe_z_loss_coeff < 0):
        raise ArgumentError("--moe-aux-loss-coeff and --moe-z-loss-coeff must not be negative")
    args.moe_layer_freq = moe_layer_pattern(args.moe_layer_freq, args.first_k_dense_replace, args.num_layers)
    etp = args.expert_tensor_parallel_size
    if etp is None:
        etp = args.expert_tensor_parallel_size = tp  # megatron-core's default
    if etp < 1 or args.moe_ffn_hidden_size % etp or (
            args.moe_shared_expert_intermediate_size or 0) % tp:
        raise ArgumentError(f"--expert-tensor-parallel-size {etp} must divide --moe-ffn-hidden-size "
                            f"{args.moe_ffn_hidden_size} (and TP {tp} the shared expert's size)")
    if world_size % (etp * ep * pp):
        raise ArgumentError(
            f"world size {world_size} is not divisible by --expert-tensor-parallel-size {etp} x "
            f"--expert-model-parallel-size {ep} x --pipeline-model-parallel-size {pp}: launch a multiple of "
            f"{etp * ep * pp} processes")


def moe_layer_pattern(freq: int | list[int], first_k_dense: int | None, num_layers: int) -> list[int]:
    """1 for each MoE layer, 0 for each dense one, from --moe-layer-freq and --first-k-dense-replace."""
    if first_k_dense == -1:
        first_k_dense = None  # MindSpeed-LLM's scripts write -1 for "no dense layers"
    if isinstance(freq, (list, tuple)):
        if first_k_dense is not None:
            raise ArgumentError("--first-k-dense-replace with a --moe-layer-freq pattern: write the dense "
                                "layers into the pattern, or give --moe-layer-freq N")
        if len(freq) != num_layers:
            raise ArgumentError(f"--moe-layer-freq has {len(freq)} entries for --num-layers {num_layers}: "
                                "give "
                                "one 0 (dense) or 1 (MoE) per layer")
        return list(freq)
    if freq == 0 or freq < -1:
        raise ArgumentError(f"--moe-layer-freq {freq}: use N >= 1 (an MoE layer every N layers), -1 (all) "
                            "or a "
                            "pattern such as \"([0]*1+[1]*3)\"")
    first = first_k_dense or 0
    if not 0 <= first < num_layers:
        raise ArgumentError(f"--first-k-dense-replace {first_k_dense} must be between 0 and --num-layers "
                            f"{num_layers} - 1")
    return [0 if i < first else int(i % freq == 0) for i in range(num_layers)]
def _take_from_hf_caches(args: argparse.Namespace) -> None:
    """An HF --load folder and raw --data-path files: the flags name what start-up builds from them
    (``mindspeed_llm.from_hf``: the converted checkpoint, the preprocessed datasets)."""
    try:
        plan = check_from_hf_flags(args)
    except FromHfError as exc:
        raise ArgumentError(str(exc)) from None
    if plan.hf_load:
        given = args.tokenizer_name_or_path or args.tokenizer_model
        if args.tokenizer_type != "NullTokenizer" and not given:
            args.tokenizer_name_or_path = plan.hf_load  # the HF folder's own tokenizer
        if plan.mg2hf and args.hf_cfg_dir is None:
            args.hf_cfg_dir = plan.hf_load  # the HF copies take its config and tokenizer files
        args.enable_hf2mg_convert = True
        args.model_type_hf = plan.model_type_hf
        args.load = plan.mg_dir
    args.enable_mg2hf_convert = plan.mg2hf
    if plan.data_path is not None:
        args.data_path = list(plan.data_path)


def _check_spec(args: argparse.Namespace) -> None:
    """--spec names the layer of a family we build (models/names.LAYER_SPECS), and of this launch's family."""
    if args.spec is None:
        return
    spec = tuple(args.spec)
    if spec not in LAYER_SPECS:
        known = " | ".join(" ".join(k) for k in LAYER_SPECS)
        raise ArgumentError(
            f"--spec {' '.join(spec) or '(empty)'} is not a layer spec built here: the model is its family's "
            f"megatron-core local layer; use one of {known}, or drop --spec"
        )
    families = LAYER_SPECS[spec]
    if families and args.model_type_hf and args.model_type_hf not in families:
        raise ArgumentError(
            f"--spec {' '.join(spec)} is the layer of {' / '.join(families)}, not of --model-type-hf "
            f"{args.model_type_hf}: drop --spec (each family builds its own layer)"
        )


def _check_instruction_flags(args: argparse.Namespace) -> None:
    """MindSpeed-LLM's fine-tuning flags: --stage sft, --is-instruction-dataset and what needs them."""
    if args.stage == "sft":
        args.is_instruction_dataset = True  # posttrain_gpt.py --stage sft trains on instruction data
    if args.stage in DPO_STAGES:
        args.is_pairwise_dataset = True  # preference alignment trains on pairs (mindspeed_llm/dpo)
        # Pipeline stages exchange the pairs' (and the reference's) activations: shapes as they come.
        args.variable_seq_lengths = args.pipeline_model_parallel_size > 1 or args.no_pad_to_seq_lengths
    if args.is_instruction_dataset:
        # Token-weighted over the global batch: gradients divided by all its learned tokens (summed over
        # DP), not a mean of micro-batch means, so how samples fall into micro-batches (packed or not)
        # does not change a step.
        args.calculate_per_token_loss = True
    if args.no_pad_to_seq_lengths or (args.variable_seq_lengths and not args.is_pairwise_dataset):
        # MindSpeed-LLM turns --variable-seq-lengths on with --no-pad-to-seq-lengths; either gives both here.
        args.variable_seq_lengths = args.no_pad_to_seq_lengths = True
    if args.pad_to_multiple_of < 1:
        raise ArgumentError(f"--pad-to-multiple-of must be >= 1, got {args.pad_to_multiple_of}")
    if not args.is_instruction_dataset and not args.is_pairwise_dataset:
        needs = [flag for flag, on in (("--prompt-type", args.prompt_type is not None),
                                       ("--no-pad-to-seq-lengths", args.no_pad_to_seq_lengths),
                                       ("--reset-attention-mask", args.reset_attention_mask)) if on]
        if needs:
            raise ArgumentError(
                f"{' '.join(needs)} only apply to instruction data: fine-tune with "
                "posttrain_gpt.py --stage sft (or add --is-instruction-dataset) and --data-path "
                "PREFIX of preprocess_data.py --handler-name ...InstructionHandler"
            )
        return
    if args.mock_data or args.train_data_path or args.valid_data_path or args.test_data_path:
        raise ArgumentError("instruction data is read from one --data-path PREFIX (preprocess_data.py's "
                            "--output-prefix; --split divides it): drop --mock-data/--train-data-path/"
                            "--valid-data-path/--test-data-path")
    if args.data_path and len(split_data_path(args.data_path)[0]) != 1:
        raise ArgumentError(
            f"--data-path {' '.join(args.data_path)}: instruction data takes one PREFIX, not a "
            "blend; preprocess the sources into one dataset"
        )
    if args.reset_attention_mask:
        args.reset_position_ids = True  # the attention kernel numbers positions per document
    elif args.reset_position_ids:
        raise ArgumentError("--reset-position-ids without --reset-attention-mask changes nothing for RoPE "
                            "models (megatron-core numbers positions 0..s-1): add --reset-attention-mask for "
                            "packed data, or drop --reset-position-ids")
    if args.eod_mask_loss:
        raise ArgumentError(
            "--eod-mask-loss does not apply to instruction data (labels -100 mark what is not "
            "learned; the closing tokens of answers are learned): drop it"
        )


def _check_training_length(args: argparse.Namespace) -> None:
    """Iteration- or sample-based training, never a mix (Megatron-LM's rules)."""
    if (args.train_iters is None) == (args.train_samples is None):
        raise ArgumentError("give exactly one of --train-iters N and --train-samples N")
    if args.train_iters is not None:
        mixed = [f for f, v in (("--lr-decay-samples", args.lr_decay_samples),
                                ("--lr-warmup-samples", args.lr_warmup_samples or None),
                                ("--lr-wsd-decay-samples", args.lr_wsd_decay_samples)) if v is not None]
        if mixed:
            raise ArgumentError(f"{' '.join(mixed)} go with --train-samples; with --train-iters use the "
                                "-iters flags (--lr-decay-iters, --lr-warmup-iters, --lr-wsd-decay-iters)")
        if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
            raise ArgumentError("give only one of --lr-warmup-fraction and --lr-warmup-iters")
    else:
        mixed = [f for f, v in (("--lr-decay-iters", args.lr_decay_iters),
                                ("--lr-warmup-iters", args.lr_warmup_iters or None),
                                ("--lr-wsd-decay-iters", args.lr_wsd_decay_iters)) if v is not None]
        if mixed:
            raise ArgumentError(
                f"{' '.join(mixed)} go with --train-iters; with --train-samples use the "
                "-samples flags (--lr-decay-samples, --lr-warmup-samples, --lr-wsd-decay-samples)"
            )
        if args.lr_warmup_fraction is not None and args.lr_warmup_samples:
            raise ArgumentError("give only one of --lr-warmup-fraction and --lr-warmup-samples")


def _first_last_stage_layers(args: argparse.Namespace, pp: int) -> None:
    """--decoder-first/last-pipeline-num-layers as a --num-layer-list (the other stages share the rest
    evenly)."""
    first, last = args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers
    if first is None and last is None:
        return
    flags = "--decoder-first-pipeline-num-layers/--decoder-last-pipeline-num-layers"
    if pp < 2:
        raise ArgumentError(f"{flags} need --pipeline-model-parallel-size >= 2")
    if args.num_layer_list:
        raise ArgumentError(f"{flags} cannot be combined with --num-layer-list: give one of them")
    if args.num_layers_per_virtual_pipeline_stage:
        raise ArgumentError(f"{flags} cannot be combined with --num-layers-per-virtual-pipeline-stage")
    fixed = [n for n in (first, last) if n is not None]
    if any(n < 0 for n in fixed):
        raise ArgumentError(f"{flags} must not be negative")
    rest, others = args.num_layers - sum(fixed), pp - len(fixed)
    if rest < 0 or (others and rest % others) or (not others and rest):
        raise ArgumentError(
            f"--num-layers {args.num_layers} minus {flags} ({rest} layers) cannot be split evenly "
            f"over the other {others} pipeline stages: adjust them, or give --num-layer-list"
        )
    middle = rest // others if others else 0
    counts = [middle] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    if len(set(counts)) > 1:  # even counts are the default split (no layout to record)
        args.num_layer_list = ",".join(map(str, counts))



# ---- inference.py ------------------------------------------------------------------------------------------
_DATA_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path", "mock_data")


def _check_tasks(args: argparse.Namespace) -> None:
    """--task: default from the sampling flags; chat alone; sampling flags only where something samples."""
    if args.task is None:
        args.task = ["do_sample" if sampling_flags_given(args) else "greedy"]
    args.task = list(dict.fromkeys(args.task))  # each once, in the order given
    if "chat" in args.task and len(args.task) > 1:
        raise ArgumentError(
            f"--task {' '.join(args.task)}: chat runs alone (it samples when --temperature/--top-k/"
            "--top-p is given, else it is greedy)"
        )
    if args.task == ["greedy"] and sampling_flags_given(args):
        raise ArgumentError(
            "--temperature/--top-k/--top-p mean nothing with --task greedy: add --task do_sample "
            "(or drop --task), or drop them"
        )
    if args.temperature is not None and not args.temperature > 0:  # nan fails this test too
        raise ArgumentError(
            f"--temperature must be > 0, got {args.temperature} (greedy decoding is --task greedy)"
        )
    if args.temperature is not None and not MIN_TEMPERATURE <= args.temperature <= MAX_TEMPERATURE:
        raise ArgumentError(
            f"--temperature {args.temperature:g} is outside [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]: "
            "scores divided by it overflow or vanish; below that range sampling is greedy decoding "
            "(--task greedy)"
        )


# --temperature's range: logits / T stays finite in float32 for any logit a model gives (|logit| < 1e4),
# and T > 1e4 leaves every token equally likely; below the range the distribution is greedy decoding.
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4


def _check_prompts_file(path: str) -> None:
    """--prompts-file: UTF-8 text with at least one non-blank line (one prompt per line)."""
    try:
        with open(path, encoding="utf-8") as f:
            has_prompt = any(line.strip() for line in f)
    except UnicodeDecodeError as exc:
        raise ArgumentError(
            f"--prompts-file {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, "
            "one prompt per line"
        ) from None
    except OSError as exc:
        raise ArgumentError(f"--prompts-file {path}: cannot be read ({exc.strerror})") from None
    if not has_prompt:
        raise ArgumentError(f"--prompts-file {path}: holds no prompt (every line is blank); "
                            "one prompt per line")


def _check_checkpoint_reader_args(args: argparse.Namespace, world_size: int, *, reads: str, work: str,
                                   own_checks=None) -> None:
    """What inference.py and evaluation.py share: no training dataset, a --load, the training rules for the
    model and parallel flags (with the training-only settings they need filled in), one model chunk per
    stage, no sequence parallelism (``reads``: what the tool reads no dataset of, and where its inputs come
    from; ``work``: what it runs; ``own_checks``: the tool's own flag rules, before the training rules)."""
    given_data = [f"--{name.replace('_', '-')}" for name in _DATA_FLAGS[:-1] if getattr(args, name)]
    if given_data:
        raise ArgumentError(f"{' '.join(given_data)}: {reads}")
    if not args.load:
        raise ArgumentError(
            "--load is required: the Megatron checkpoint folder (convert_ckpt.py --save-dir, or "
            "a training --save)"
        )
    if own_checks is not None:
        own_checks(args)
    # Training-only settings that check_args needs; generation and evaluation never read them.
    if args.lr is None:
        args.lr = 0.0
    if args.train_iters is None and args.train_samples is None:
        args.train_iters = 1
    args.mock_data = True
    if args.seq_length is None and args.max_position_embeddings is not None:
        args.seq_length = args.max_position_embeddings
    # Before the training rules: those would name the virtual stages' micro-batch rule instead.
    if args.num_layers_per_virtual_pipeline_stage:
        raise ArgumentError(
            f"--num-layers-per-virtual-pipeline-stage: {work} runs one model chunk per "
            "pipeline stage; reshard the checkpoint without virtual stages (convert_ckpt.py mg->mg)"
        )
    # --prompt-type is the training parser's (the SFT data's template); training refuses it without
    # instruction data, generation uses it for --task chat and evaluation for instruction models: checked
    # by each tool instead.
    prompt_type, args.prompt_type = args.prompt_type, None
    check_args(args, world_size, training=False)
    args.prompt_type = prompt_type
    if args.sequence_parallel:
        raise ArgumentError(f"--sequence-parallel is not supported for {work} (megatron-core's static "
                            "inference context refuses it): drop the flag")


def check_inference_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """The training rules for the model and parallel flags, and the generation flags' own rules."""
    _check_checkpoint_reader_args(
        args, world_size, work="generation",
        reads="inference.py reads no dataset; drop the flag (prompts come from --prompt or --prompts-file)")
    if args.max_new_tokens < 1:
        raise ArgumentError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.max_batch_size < 1:
        raise ArgumentError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    _check_tasks(args)
    if args.top_k is not None and args.top_k < 0:
        raise ArgumentError(f"--top-k must be >= 0 (0: no top-k filter, as transformers), got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ArgumentError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.history_turns < 0:
        raise ArgumentError(f"--history-turns must be >= 0, got {args.history_turns}")
    if args.tokenizer_type == "NullTokenizer":
        raise ArgumentError("--tokenizer-type NullTokenizer cannot turn text into tokens: give "
                            "--tokenizer-type PretrainedFromHF --tokenizer-name-or-path HF_MODEL_FOLDER")
    if args.task == ["chat"]:
        if args.prompt_type is None:
            raise ArgumentError(
                f"--task chat needs --prompt-type (the template the model was fine-tuned with: "
                f"{', '.join(PROMPT_TYPES)})"
            )
        if args.prompts_file:
            raise ArgumentError(
                "--task chat takes the user turns from --prompt (or stdin), not --prompts-file"
            )
    elif args.prompt_type is not None:
        raise ArgumentError("--prompt-type applies to --task chat: add --task chat, or drop --prompt-type")
    if args.task != ["chat"] and not (args.prompt or args.prompts_file):
        raise ArgumentError("nothing to generate: give --prompt TEXT (repeatable) or --prompts-file PATH, "
                            "or --task chat --prompt-type TYPE for a conversation")
    if args.prompts_file and not os.path.isfile(args.prompts_file):
        raise ArgumentError(f"--prompts-file {args.prompts_file}: no such file (one prompt per line)")
    if args.prompts_file:
        _check_prompts_file(args.prompts_file)
    # Weights only: no optimizer, scheduler or RNG state is read, whatever the checkpoint holds.
    args.no_load_optim = args.no_load_rng = True
    return args


_QUIET_RANK_EXIT_DELAY_S = 2.0


def check_command_line(argv: Sequence[str] | None = None, extra_args_provider=None,
                       require_stage: bool = False, check=None, error_status: int = 1) -> argparse.Namespace:
    """Parse and check a launch before torch is imported; a bad one prints one line on rank 0 and exits
    ``error_status`` (1 for training, 2 for inference.py as for the other tools; argparse's own errors: 2).

    Flags, world size and paths are the same on every rank, so rank 0 alone speaks (also for
    ``--help`` and argparse's usage errors) and the other ranks exit quietly with the same status.
    ``check`` replaces :func:`check_args` (another entry's rules, e.g. inference.py's).
    """
    rank, world = launch_rank()
    quiet = contextlib.ExitStack()
    if rank != 0:
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
        quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    try:
        with quiet:
            args = parse_args(None if argv is None else list(argv), extra_args_provider)
        if require_stage and args.stage is None:
            raise ArgumentError(
                "posttrain_gpt.py needs --stage sft (instruction fine-tuning on preprocess_data.py's "
                "instruction data) or --stage dpo|simpo|orpo (preference alignment on pairwise data); "
                "pretraining is pretrain_gpt.py"
            )
        if (
            not args.use_checkpoint_args
        ):  # else the model flags come from the checkpoint (initialize_megatron)
            (check or check_args)(args, world)
        check_paths(args)
    except (ArgumentError, SystemExit) as exc:
        status = error_status if isinstance(exc, ArgumentError) else exc.code
        if rank == 0 and isinstance(exc, ArgumentError):
            print_error(str(exc))
        elif rank != 0 and status:
            # torchrun stops every rank as soon as one has failed: give rank 0 the time to say why.
            time.sleep(_QUIET_RANK_EXIT_DELAY_S)
        sys.exit(status)
    return args


# ---- evaluation.py -----------------------------------------------------------------------------------------
def check_evaluation_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """The training rules for the model and parallel flags, and evaluation's own
    (``mindspeed_llm.evaluation.config``)."""
    from mindspeed_llm.evaluation.config import check_evaluation_flags

    # (--prompt-type here: the template each question is put in for an instruction model.)
    _check_checkpoint_reader_args(
        args, world_size, work="evaluation", own_checks=check_evaluation_flags,
        reads="evaluation.py reads no training dataset; drop the flag (benchmarks come from --task-data-path "
              "or --lm-eval-tasks)")
    args.no_load_optim = args.no_load_rng = True  # weights only
    return args
