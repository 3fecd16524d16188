"""Megatron-LM's command line for ``pretrain_gpt.py``: parse, validate, build megatron-core configs.

This module imports neither torch nor megatron-core: ``pretrain_gpt.py`` answers ``--help`` and
refuses a bad launch (:func:`check_command_line`) before the heavy imports.

Flag names and defaults follow Megatron-LM (core_v0.16.x ``megatron/training/arguments.py``) for
everything MindSpeed-LLM's pretrain scripts pass. A flag we parse either works or is rejected with
a message; flags that only select CUDA/NPU kernels are recorded in :data:`KERNEL_ONLY_FLAGS` and
reported once as no-ops where they mean nothing (see :func:`kernel_noop_flags`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import io
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from mindspeed_llm.console import launch_rank, print_error
from mindspeed_llm.data.chat_templates import PROMPT_TYPES
from mindspeed_llm.lora.config import LoraError, add_lora_flags, check_lora_flags


class ArgumentError(ValueError):
    """A launch whose flags cannot work; the message names the flag and the fix."""


# Flags that only choose a fused kernel or a communication overlap of CUDA/NPU libraries. On the
# CPU they change nothing (our feature patches decide per device what --use-* means).
KERNEL_ONLY_FLAGS = (
    "no_gradient_accumulation_fusion", "no_masked_softmax_fusion", "no_bias_dropout_fusion",
    "no_rope_fusion", "use_fused_ring_attention_update", "use_cp_send_recv_overlap",
    "no_async_tensor_model_parallel_allreduce", "no_create_attention_mask_in_dataloader",
)
FEATURE_KERNEL_FLAGS = ("use_flash_attn", "use_fused_rmsnorm", "use_fused_rotary_pos_emb", "use_fused_swiglu")


def _str2list(value: str) -> list[int]:
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (Megatron-LM flag names)."""
    p = argparse.ArgumentParser(
        prog="pretrain_gpt.py", allow_abbrev=False,
        description="Megatron-compatible GPT pretraining on megatron-core (CPU, CUDA, NPU).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--use-mcore-models", action="store_true", help="accepted: models are always megatron-core")
    g.add_argument("--use-legacy-models", action="store_true", help="rejected: only megatron-core models")
    g.add_argument("--transformer-impl", default="local", choices=["local", "transformer_engine"])
    g.add_argument("--num-layers", type=int, required=False)
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--ffn-hidden-size", type=int)
    g.add_argument("--num-attention-heads", type=int)
    g.add_argument("--kv-channels", type=int)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=1)
    g.add_argument("--max-position-embeddings", type=int)
    g.add_argument("--position-embedding-type", default="rope", choices=["rope", "learned_absolute", "none"])
    g.add_argument("--use-rotary-position-embeddings", action="store_true")
    g.add_argument("--rotary-base", type=float, default=10000.0)
    g.add_argument("--rotary-percent", type=float, default=1.0)
    g.add_argument("--rope-scaling-type", choices=["llama3", "linear"], default=None)
    g.add_argument("--rope-scaling-factor", type=float, default=None)
    g.add_argument("--low-freq-factor", type=float, default=None)
    g.add_argument("--high-freq-factor", type=float, default=None)
    g.add_argument("--original-max-position-embeddings", type=int, default=None)
    g.add_argument("--normalization", default="RMSNorm", choices=["RMSNorm", "LayerNorm"])
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument("--add-qkv-bias", action="store_true")
    g.add_argument("--qk-layernorm", action="store_true", help="per-head RMSNorm on queries and keys (Qwen3)")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-softmax-in-fp32", action="store_true")
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--padded-vocab-size", type=int, default=None)
    g.add_argument("--use-cpu-initialization", action="store_true")
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="megatron-core's fused (torch.compile'd) vocab-parallel cross entropy")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="scale gradients by the global batch's token count instead of per micro-batch means")

    g = p.add_argument_group("kernels (CUDA/NPU only; no-ops on CPU)")
    g.add_argument("--use-flash-attn", action="store_true")
    g.add_argument("--use-fused-rmsnorm", action="store_true")
    g.add_argument("--use-fused-swiglu", action="store_true")
    g.add_argument("--use-fused-rotary-pos-emb", action="store_true")
    g.add_argument("--no-gradient-accumulation-fusion", action="store_true")
    g.add_argument("--no-masked-softmax-fusion", action="store_true")
    g.add_argument("--no-bias-dropout-fusion", action="store_true")
    g.add_argument("--no-bias-swiglu-fusion", action="store_true",
                   help="plain silu(x1) * x2 with autograd instead of megatron's fused SwiGLU (Megatron-LM's flag)")
    g.add_argument("--no-rope-fusion", action="store_true")
    g.add_argument("--no-async-tensor-model-parallel-allreduce", action="store_true")
    g.add_argument("--use-fused-ring-attention-update", action="store_true")
    g.add_argument("--use-cp-send-recv-overlap", action="store_true")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--num-layer-list", type=str, default=None, help="layers per pipeline stage, e.g. 6,8,8,6")
    g.add_argument("--decoder-first-pipeline-num-layers", type=int, default=None,
                   help="layers of the first pipeline stage (the others share the rest evenly)")
    g.add_argument("--decoder-last-pipeline-num-layers", type=int, default=None,
                   help="layers of the last pipeline stage (the others share the rest evenly)")
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-algo", default="megatron_cp_algo")
    g.add_argument("--ulysses-degree-in-cp", type=int, default=None,
                   help="hybrid_cp_algo: Ulysses (all-to-all) ranks inside each ring rank of the CP group")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--distributed-backend", default=None, choices=["nccl", "gloo", "hccl"],
                   help="accepted for compatibility; the backend follows the device (gloo/nccl/hccl)")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10)
    g.add_argument("--no-shared-storage", action="store_true",
                   help="nodes do not share a file system: every node builds its own dataset index cache")
    g.add_argument("--local-rank", "--local_rank", type=int, default=None, help="ignored: torchrun sets LOCAL_RANK")

    g = p.add_argument_group("recompute")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--recompute-activations", action="store_true", help="= --recompute-granularity selective")

    g = p.add_argument_group("precision")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true")
    g.add_argument("--loss-scale", type=float, default=None)
    g.add_argument("--initial-loss-scale", type=float, default=2**32)
    g.add_argument("--min-loss-scale", type=float, default=1.0)
    g.add_argument("--loss-scale-window", type=float, default=1000)
    g.add_argument("--hysteresis", type=int, default=2)

    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"])
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-decay-samples", type=int, default=None, help="with --train-samples")
    g.add_argument("--lr-warmup-samples", type=int, default=0, help="with --train-samples")
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--lr-wsd-decay-style", default="exponential",
                   choices=["exponential", "linear", "cosine", "minus_sqrt"])
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    g.add_argument("--lr-wsd-decay-samples", type=int, default=None, help="with --train-samples")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--start-weight-decay", type=float, default=None)
    g.add_argument("--end-weight-decay", type=float, default=None)
    g.add_argument("--weight-decay-incr-style", choices=["constant", "linear", "cosine"], default="constant")
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--sgd-momentum", type=float, default=0.9)
    # Megatron-LM spells these with an underscore in the middle; the all-dash spelling is accepted too.
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler",
                   dest="override_opt_param_scheduler", action="store_true",
                   help="resuming: take the LR/WD schedule from this launch's flags, not the checkpoint's")
    g.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                   dest="use_checkpoint_opt_param_scheduler", action="store_true",
                   help="resuming: keep the checkpoint's LR/WD schedule whatever the launch's flags say")

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--rampup-batch-size", nargs="*", default=None)
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None,
                   help="train for this many samples (instead of --train-iters)")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save (with --save) and exit once training has run this many minutes")
    g.add_argument("--manual-gc", action="store_true",
                   help="disable Python's automatic garbage collection; collect every --manual-gc-interval")
    g.add_argument("--manual-gc-interval", type=int, default=0)
    g.add_argument("--no-manual-gc-eval", action="store_false", dest="manual_gc_eval",
                   help="with --manual-gc: no collection around evaluation")
    g.add_argument("--empty-unused-memory-level", type=int, default=0, choices=[0, 1, 2],
                   help="release cached accelerator memory after each step (1) and after the optimizer (2)")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM: finish the current step, save a checkpoint, exit 0")
    g.add_argument("--check-for-nan-in-loss-and-grad", dest="check_for_nan_in_loss_and_grad",
                   action="store_true", default=True,
                   help="stop at the first NaN/Inf loss or gradient (the default)")
    g.add_argument("--no-check-for-nan-in-loss-and-grad", dest="check_for_nan_in_loss_and_grad",
                   action="store_false", help="train on through NaN/Inf losses and gradients")

    g = p.add_argument_group("data and tokenizer")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="one prefix, or weight prefix weight prefix ... (blend)")
    g.add_argument("--train-data-path", nargs="*", default=None, help="the training split's prefix or blend")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="the validation split's prefix or blend")
    g.add_argument("--test-data-path", nargs="*", default=None, help="the test split's prefix or blend")
    g.add_argument("--mock-data", action="store_true", help="megatron-core's synthetic MockGPTDataset")
    g.add_argument("--dataloader-type", default=None, choices=["single", "cyclic", "external"])
    g.add_argument("--split", default="969, 30, 1")
    g.add_argument("--seq-length", type=int, default=None)
    g.add_argument("--tokenizer-type", default="PretrainedFromHF",
                   choices=["PretrainedFromHF", "HuggingFaceTokenizer", "NullTokenizer"])
    g.add_argument("--tokenizer-name-or-path", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--tokenizer-not-use-fast", action="store_true")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only: ids 0..N-1, EOD = N")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--no-mmap-bin-files", action="store_true")
    g.add_argument("--reset-position-ids", action="store_true")
    g.add_argument("--reset-attention-mask", action="store_true")
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--no-create-attention-mask-in-dataloader", action="store_true")

    g = p.add_argument_group("instruction fine-tuning (posttrain_gpt.py --stage sft, MindSpeed-LLM's flags)")
    g.add_argument("--stage", default=None, choices=["sft"],
                   help="sft: instruction fine-tuning on preprocess_data.py's instruction data (--data-path PREFIX)")
    g.add_argument("--is-instruction-dataset", action="store_true",
                   help="--data-path is instruction data: PREFIX_packed_{input_ids,attention_mask,labels}_document")
    g.add_argument("--prompt-type", default=None, choices=list(PROMPT_TYPES),
                   help="the chat template the data was preprocessed with (recorded in the checkpoint's args)")
    g.add_argument("--no-pad-to-seq-lengths", action="store_true",
                   help="pad each micro-batch to its longest sample (rounded up to --pad-to-multiple-of), "
                        "not to --seq-length")
    g.add_argument("--variable-seq-lengths", action="store_true",
                   help="pipeline stages exchange each micro-batch's shape; implies --no-pad-to-seq-lengths")
    g.add_argument("--pad-to-multiple-of", type=int, default=8,
                   help="with --no-pad-to-seq-lengths: micro-batch lengths are rounded up to a multiple of this")

    g = p.add_argument_group("checkpointing")
    g.add_argument("--load", default=None)
    g.add_argument("--save", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--no-save-optim", action="store_true")
    g.add_argument("--no-save-rng", action="store_true")
    g.add_argument("--finetune", action="store_true")
    g.add_argument("--ckpt-format", default="torch", choices=["torch", "torch_dist", "zarr"],
                   help="format of --save (torch: legacy per-rank files; torch_dist: megatron-core "
                        "dist_checkpointing, Megatron-LM's default). --load reads either, whatever this says")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="take the model's settings from the --load checkpoint's args")
    g.add_argument("--ckpt-step", type=int, default=None, help="load this iteration instead of the tracker's")

    add_lora_flags(p)

    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--log-throughput", action="store_true")
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--tensorboard-log-interval", type=int, default=1)
    g.add_argument("--log-params-norm", action="store_true", help="log the L2 norm of the parameters")
    g.add_argument("--log-num-zeros-in-grad", action="store_true", help="log the number of zero gradients")
    return p


def parse_args(argv: list[str] | None = None, extra_args_provider=None) -> argparse.Namespace:
    """Parse Megatron-style flags (``extra_args_provider(parser)`` may add more, as in Megatron-LM)."""
    from mindspeed_llm.training.state import RunArgs

    parser = build_parser()
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    return parser.parse_args(argv, namespace=RunArgs())


def given_flags(argv: list[str] | None = None, extra_args_provider=None) -> set[str]:
    """Destinations of the flags written on the command line (not left at their defaults)."""
    import sys

    parser = build_parser()
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_args(sys.argv[1:] if argv is None else argv)))


# ---- validation ----------------------------------------------------------------------------------------------
def _need(args: argparse.Namespace, *names: str) -> None:
    missing = ["--" + n.replace("_", "-") for n in names if getattr(args, n) is None]
    if missing:
        raise ArgumentError(f"missing required flag(s): {' '.join(missing)}")


def validate_args(args: argparse.Namespace, world_size: int, check=None) -> argparse.Namespace:
    """Check the flags against each other and the world size; fill derived values (DP size, dtype, ...).

    ``check`` replaces :func:`check_args` (another entry's rules, e.g. inference.py's).
    """
    import torch

    (check or check_args)(args, world_size)
    args.params_dtype = torch.bfloat16 if args.bf16 else torch.float32
    return args


# megatron-core's TransformerConfig.cp_comm_type of each --context-parallel-algo ('a2a+p2p': hierarchical CP).
CONTEXT_PARALLEL_ALGOS = {"megatron_cp_algo": "p2p", "ulysses_cp_algo": "a2a", "hybrid_cp_algo": "a2a+p2p"}


def _check_context_parallel(args: argparse.Namespace) -> None:
    """--context-parallel-size / --context-parallel-algo: what ring and Ulysses attention support."""
    cp, algo = args.context_parallel_size, args.context_parallel_algo
    if cp < 1:
        raise ArgumentError(f"--context-parallel-size must be >= 1, got {cp}")
    if algo not in CONTEXT_PARALLEL_ALGOS:
        raise ArgumentError(f"--context-parallel-algo {algo} is not known: use megatron_cp_algo, ulysses_cp_algo "
                            "or hybrid_cp_algo")
    if args.ulysses_degree_in_cp is not None and algo != "hybrid_cp_algo":
        raise ArgumentError(f"--ulysses-degree-in-cp is for --context-parallel-algo hybrid_cp_algo, not {algo}: "
                            "drop it or use hybrid_cp_algo")
    if cp == 1:
        return
    if algo == "hybrid_cp_algo":
        _check_hybrid_degree(cp, args.ulysses_degree_in_cp)
    if args.seq_length % (2 * cp):
        raise ArgumentError(f"--seq-length {args.seq_length} must be divisible by 2 x --context-parallel-size {cp} "
                            f"(each CP rank holds two of {2 * cp} equal chunks): use a multiple of {2 * cp}")


def _check_hybrid_degree(cp: int, ulysses: int | None) -> None:
    """hybrid_cp_algo: --ulysses-degree-in-cp U splits the CP group into CP / U rings of U Ulysses ranks."""
    if ulysses is None:
        raise ArgumentError(f"--context-parallel-algo hybrid_cp_algo needs --ulysses-degree-in-cp U (U divides "
                            f"--context-parallel-size {cp}, 1 < U < {cp})")
    if ulysses <= 1 or ulysses >= cp or cp % ulysses:
        fix = ("use megatron_cp_algo" if ulysses == 1 else "use ulysses_cp_algo" if ulysses == cp
               else f"use a divisor of {cp} between 2 and {cp // 2}")
        raise ArgumentError(f"--ulysses-degree-in-cp {ulysses} with --context-parallel-size {cp}: hybrid_cp_algo "
                            f"needs a divisor of the CP size strictly between 1 and {cp} (both Ulysses and ring "
                            f"parts larger than 1); {fix}")


def check_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """:func:`validate_args` without torch: the flags against each other and the world size, derived values."""
    _need(args, "num_layers", "hidden_size", "num_attention_heads", "seq_length", "lr")
    _check_training_length(args)
    if args.use_legacy_models:
        raise ArgumentError("--use-legacy-models is not supported: megatron-core models only (drop the flag)")
    if args.transformer_impl != "local":
        raise ArgumentError("--transformer-impl transformer_engine is not supported: use --transformer-impl local "
                            "(our patch layer provides the fused kernels)")
    if args.use_rotary_position_embeddings:
        args.position_embedding_type = "rope"
    if args.position_embedding_type != "rope":
        raise ArgumentError(f"--position-embedding-type {args.position_embedding_type} is not supported: use rope")
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
        raise ArgumentError("--ckpt-format torch_dist with --no-shared-storage: a distributed checkpoint is one "
                            "folder written by every rank, so --save must be on storage all nodes share; use "
                            "--ckpt-format torch")
    _check_lora(args)
    if args.rampup_batch_size:
        raise ArgumentError("--rampup-batch-size is not supported: give a fixed --global-batch-size")
    _check_context_parallel(args)
    if args.dataloader_type is None:
        args.dataloader_type = "single"
    if args.dataloader_type != "single":
        raise ArgumentError(f"--dataloader-type {args.dataloader_type} is not supported: pretraining reads "
                            "consecutive global batches in the dataset's (already shuffled) order; use single")
    if args.manual_gc_interval < 0:
        raise ArgumentError(f"--manual-gc-interval must be >= 0, got {args.manual_gc_interval}")
    if args.exit_duration_in_mins is not None and args.exit_duration_in_mins <= 0:
        raise ArgumentError(f"--exit-duration-in-mins must be positive, got {args.exit_duration_in_mins}")
    _check_instruction_flags(args)
    if args.rope_scaling_type and args.rope_scaling_factor is None:
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
        raise ArgumentError(f"--seq-length {args.seq_length} is larger than --max-position-embeddings "
                            f"{args.max_position_embeddings}: lower --seq-length or raise --max-position-embeddings")
    if args.recompute_activations:
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full" and args.recompute_method is None:
        raise ArgumentError("--recompute-granularity full needs --recompute-method uniform|block "
                            "and --recompute-num-layers N")
    if args.recompute_method and args.recompute_num_layers is None:
        args.recompute_num_layers = 1

    # Parallel sizes.
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    if world_size % (tp * pp * cp):
        cp_part = f" x --context-parallel-size {cp}" if cp > 1 else ""
        raise ArgumentError(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                            f"--pipeline-model-parallel-size {pp}{cp_part}: launch a multiple of {tp * pp * cp} "
                            "processes")
    args.world_size = world_size
    args.data_parallel_size = world_size // (tp * pp * cp)
    if args.num_attention_heads % tp or args.num_query_groups % tp:
        raise ArgumentError(f"--num-attention-heads {args.num_attention_heads} and --num-query-groups "
                            f"{args.num_query_groups} must be divisible by --tensor-model-parallel-size {tp}")
    if cp > 1 and args.context_parallel_algo == "ulysses_cp_algo" and (args.num_attention_heads // tp) % cp:
        raise ArgumentError(f"--context-parallel-algo ulysses_cp_algo splits the attention heads of each TP rank "
                            f"({args.num_attention_heads // tp}) over --context-parallel-size {cp}: they must divide "
                            "evenly; use megatron_cp_algo or another CP size")
    ulysses = args.ulysses_degree_in_cp
    if cp > 1 and args.context_parallel_algo == "hybrid_cp_algo" and (args.num_attention_heads // tp) % ulysses:
        raise ArgumentError(f"--context-parallel-algo hybrid_cp_algo splits the attention heads of each TP rank "
                            f"({args.num_attention_heads // tp}) over --ulysses-degree-in-cp {ulysses}: they must "
                            "divide evenly; use a smaller --ulysses-degree-in-cp or megatron_cp_algo")
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # Megatron-LM drops it silently at TP1; it means nothing there
    if args.no_pad_to_seq_lengths and args.sequence_parallel and args.pad_to_multiple_of % tp:
        raise ArgumentError(f"--pad-to-multiple-of {args.pad_to_multiple_of} with --sequence-parallel at "
                            f"--tensor-model-parallel-size {tp}: micro-batch lengths must split evenly over the "
                            f"TP ranks; use a multiple of {tp}, e.g. --pad-to-multiple-of {tp * 8}")
    split = 2 * cp * (tp if args.sequence_parallel else 1)
    if cp > 1 and args.no_pad_to_seq_lengths and args.pad_to_multiple_of % split:
        raise ArgumentError(f"--pad-to-multiple-of {args.pad_to_multiple_of} with --context-parallel-size {cp}: "
                            f"micro-batch lengths must split into {2 * cp} equal chunks per sequence"
                            f"{' and over the TP ranks' if split > 2 * cp else ''}; use a multiple of {split}, "
                            f"e.g. --pad-to-multiple-of {split * 8}")
    args.num_layer_list_parsed = None
    _first_last_stage_layers(args, pp)
    if args.num_layer_list:
        counts = _str2list(args.num_layer_list)
        if len(counts) != pp or sum(counts) != args.num_layers:
            raise ArgumentError(f"--num-layer-list {args.num_layer_list} must have {pp} entries (one per pipeline "
                                f"stage) that add up to --num-layers {args.num_layers}")
        if args.num_layers_per_virtual_pipeline_stage:
            raise ArgumentError("--num-layer-list cannot be combined with --num-layers-per-virtual-pipeline-stage")
        args.num_layer_list_parsed = counts
    elif args.num_layers % pp:
        raise ArgumentError(f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size "
                            f"{pp}: change PP or give --num-layer-list (e.g. uneven layers per stage)")
    args.virtual_pipeline_model_parallel_size = None
    if args.num_layers_per_virtual_pipeline_stage:
        if pp < 2:
            raise ArgumentError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2")
        per_stage = args.num_layers // pp
        if per_stage % args.num_layers_per_virtual_pipeline_stage:
            raise ArgumentError(f"{per_stage} layers per pipeline stage are not divisible by "
                                f"--num-layers-per-virtual-pipeline-stage {args.num_layers_per_virtual_pipeline_stage}")
        args.virtual_pipeline_model_parallel_size = per_stage // args.num_layers_per_virtual_pipeline_stage

    # Batch sizes.
    dp = args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise ArgumentError(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
                            f"{args.micro_batch_size} x data-parallel size {dp} (= world {world_size} / "
                            f"(TP {tp} x PP {pp}{f' x CP {cp}' if cp > 1 else ''})): use a multiple of "
                            f"{args.micro_batch_size * dp}")
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    if args.train_samples is not None:
        args.train_iters = args.train_samples // args.global_batch_size  # Megatron-LM's update_train_iters
    if args.virtual_pipeline_model_parallel_size and args.num_microbatches % pp:
        raise ArgumentError(f"the interleaved pipeline schedule needs the number of micro-batches "
                            f"({args.num_microbatches}) to be a multiple of --pipeline-model-parallel-size {pp}")

    # Precision: bf16 keeps fp32 main params (params_dtype: validate_args) and reduces gradients in fp32.
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
        raise ArgumentError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler contradict "
                            "each other: give one (the launch's schedule, or the checkpoint's)")
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


def _check_lora(args: argparse.Namespace) -> None:
    """The LoRA flags (the lora package's rules), refused as any other flag is."""
    try:
        check_lora_flags(args)
    except LoraError as exc:
        raise ArgumentError(str(exc)) from None


# ---- paths: checked before the process group and the heavy imports -------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def split_data_path(data_path: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``--data-path`` -> (prefixes, weights as given or None): ``P``, ``P1 P2 ...`` or ``W1 P1 W2 P2 ...``."""
    items = [s for item in data_path for s in item.split()]
    if len(items) > 1 and len(items) % 2 == 0:
        try:
            [float(w) for w in items[0::2]]
        except ValueError:
            pass
        else:
            return items[1::2], items[0::2]
    # One prefix, or several without weights (Megatron-LM reads them as equally weighted).
    return items, None


def _suggest_prefixes(prefix: str) -> list[str]:
    folder = os.path.dirname(prefix) or "."
    stem = os.path.basename(prefix)
    found = sorted(glob.glob(os.path.join(folder, f"{stem}*.idx")))
    if not found:
        found = sorted(glob.glob(os.path.join(folder, "*.idx")))
    return [f[: -len(".idx")] for f in found if os.path.isfile(f[: -len(".idx")] + ".bin")]


def check_data_prefix(prefix: str) -> None:
    """Raise a clear error unless ``prefix.bin`` and ``prefix.idx`` exist."""
    if prefix.endswith((".bin", ".idx")):
        raise ArgumentError(f"--data-path must be the prefix without .bin/.idx: try {prefix[:-4]}")
    if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx"):
        return
    candidates = _suggest_prefixes(prefix)
    folder = os.path.dirname(prefix) or "."
    if candidates:
        existing = ", ".join(os.path.basename(c) + ".{bin,idx}" for c in candidates)
        hint = f"files there: {existing}; use --data-path {candidates[0]}"
        if not prefix.endswith("_document") and any(c.startswith(prefix) for c in candidates):
            hint += " (preprocess_data.py appends _<json-key>_document, e.g. _text_document, to --output-prefix)"
    elif os.path.isdir(folder):
        hint = f"{folder} holds no .bin/.idx pair; run preprocess_data.py first"
    else:
        hint = f"{folder} does not exist"
    raise ArgumentError(f"--data-path {prefix}: {prefix}.bin / {prefix}.idx not found; {hint}")


def check_tokenizer_path(path: str) -> None:
    """Raise a clear error unless ``path`` is a folder with HF tokenizer files."""
    if not os.path.isdir(path) or not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ArgumentError(f"--tokenizer-name-or-path {path}: not a folder with tokenizer files "
                            f"({', '.join(TOKENIZER_FILES)}); point it at the local HF model folder")


_PACKED_SUFFIX = "_packed_{}_document"
_PACKED_KEYS = ("input_ids", "attention_mask", "labels")


def check_instruction_prefix(prefix: str) -> None:
    """Raise a clear error unless the three instruction datasets of ``--data-path PREFIX`` exist."""
    from mindspeed_llm.data.instruction import instruction_prefixes

    if prefix.endswith((".bin", ".idx")):
        prefix = prefix[:-4]
    for key in _PACKED_KEYS:
        if prefix.endswith(_PACKED_SUFFIX.format(key)):
            raise ArgumentError(f"--data-path {prefix}: give the prefix without _packed_{key}_document (the three "
                                f"datasets share it): try --data-path {prefix[:-len(_PACKED_SUFFIX.format(key))]}")
    paths = instruction_prefixes(prefix)
    present = [key for key, p in paths.items() if os.path.isfile(p + ".bin") and os.path.isfile(p + ".idx")]
    if len(present) == len(paths):
        return
    if present:
        missing = ", ".join(paths[k] + ".{bin,idx}" for k in paths if k not in present)
        raise ArgumentError(f"--data-path {prefix}: {missing} not found (only {', '.join(present)} is there): "
                            "preprocess_data.py writes the three datasets together; re-run it")
    if os.path.isfile(prefix + "_text_document.idx") or os.path.isfile(prefix + ".idx"):
        raise ArgumentError(f"--data-path {prefix} is pretraining data (no _packed_*_document datasets): "
                            "preprocess the instructions with preprocess_data.py --handler-name "
                            "AlpacaStyleInstructionHandler --prompt-type TYPE, or train with pretrain_gpt.py")
    folder = os.path.dirname(prefix) or "."
    stem = "_packed_input_ids_document.idx"
    found = sorted(f[: -len(stem)] for f in glob.glob(os.path.join(folder, "*" + stem)))
    hint = (f"instruction data there: --data-path {found[0]}" if found else
            f"{folder} does not exist" if not os.path.isdir(folder) else
            f"{folder} holds no instruction data; run preprocess_data.py --handler-name ... first")
    raise ArgumentError(f"--data-path {prefix}: {paths['input_ids']}.bin/.idx not found; {hint}")


def check_paths(args: argparse.Namespace) -> None:
    """The data prefixes and the tokenizer folder of a checked launch exist."""
    instruction = (args.is_instruction_dataset or args.stage == "sft") and args.data_path
    if instruction:
        check_instruction_prefix(split_data_path(args.data_path)[0][0])
    for paths in (None if instruction else args.data_path, args.train_data_path, args.valid_data_path, args.test_data_path):
        for prefix in split_data_path(paths or [])[0]:
            check_data_prefix(prefix)
    if args.tokenizer_type != "NullTokenizer":
        check_tokenizer_path(args.tokenizer_name_or_path)


_QUIET_RANK_EXIT_DELAY_S = 2.0


def check_command_line(argv: Sequence[str] | None = None, extra_args_provider=None,
                       require_stage: bool = False, check=None) -> argparse.Namespace:
    """Parse and check a launch before torch is imported; a bad one prints one line on rank 0 and exits 1.

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
            raise ArgumentError("posttrain_gpt.py needs --stage sft (instruction fine-tuning on preprocess_data.py's "
                                "instruction data); pretraining is pretrain_gpt.py")
        if not args.use_checkpoint_args:  # else the model flags come from the checkpoint (initialize_megatron)
            (check or check_args)(args, world)
        check_paths(args)
    except (ArgumentError, SystemExit) as exc:
        status = 1 if isinstance(exc, ArgumentError) else exc.code
        if rank == 0 and isinstance(exc, ArgumentError):
            print_error(str(exc))
        elif rank != 0 and status:
            # torchrun stops every rank as soon as one has failed: give rank 0 the time to say why.
            time.sleep(_QUIET_RANK_EXIT_DELAY_S)
        sys.exit(status)
    return args
PACKING_MODULE = "mindspeed_llm.ops.packing"  # document-masked attention for packed samples


def _document_masking_available() -> bool:
    """Whether the model side of --reset-attention-mask (per-document attention and positions) is installed."""
    try:
        return importlib.util.find_spec(PACKING_MODULE) is not None
    except ModuleNotFoundError:
        return False


def _check_instruction_flags(args: argparse.Namespace) -> None:
    """MindSpeed-LLM's fine-tuning flags: --stage sft, --is-instruction-dataset and what needs them."""
    if args.stage == "sft":
        args.is_instruction_dataset = True  # posttrain_gpt.py --stage sft trains on instruction data
    if args.is_instruction_dataset:
        # Token-weighted over the global batch: gradients divided by all its learned tokens (summed over
        # DP), not a mean of micro-batch means, so how samples fall into micro-batches (packed or not)
        # does not change a step.
        args.calculate_per_token_loss = True
    if args.variable_seq_lengths or args.no_pad_to_seq_lengths:
        # MindSpeed-LLM turns --variable-seq-lengths on with --no-pad-to-seq-lengths; either gives both here.
        args.variable_seq_lengths = args.no_pad_to_seq_lengths = True
    if args.pad_to_multiple_of < 1:
        raise ArgumentError(f"--pad-to-multiple-of must be >= 1, got {args.pad_to_multiple_of}")
    if not args.is_instruction_dataset:
        needs = [flag for flag, on in (("--prompt-type", args.prompt_type is not None),
                                       ("--no-pad-to-seq-lengths", args.no_pad_to_seq_lengths),
                                       ("--reset-attention-mask", args.reset_attention_mask)) if on]
        if needs:
            raise ArgumentError(f"{' '.join(needs)} only apply to instruction data: fine-tune with "
                                "posttrain_gpt.py --stage sft (or add --is-instruction-dataset) and --data-path "
                                "PREFIX of preprocess_data.py --handler-name ...InstructionHandler")
        return
    if args.mock_data or args.train_data_path or args.valid_data_path or args.test_data_path:
        raise ArgumentError("instruction data is read from one --data-path PREFIX (preprocess_data.py's "
                            "--output-prefix; --split divides it): drop --mock-data/--train-data-path/"
                            "--valid-data-path/--test-data-path")
    if args.data_path and len(split_data_path(args.data_path)[0]) != 1:
        raise ArgumentError(f"--data-path {' '.join(args.data_path)}: instruction data takes one PREFIX, not a "
                            "blend; preprocess the sources into one dataset")
    if args.reset_attention_mask and not _document_masking_available():
        raise ArgumentError("--reset-attention-mask is not supported yet (document-masked attention for packed "
                            "samples is not installed): drop it, or fine-tune on unpacked data (preprocess "
                            "without --pack)")
    if args.reset_attention_mask:
        args.reset_position_ids = True  # the attention kernel numbers positions per document
    elif args.reset_position_ids:
        raise ArgumentError("--reset-position-ids without --reset-attention-mask changes nothing for RoPE "
                            "models (megatron-core numbers positions 0..s-1): add --reset-attention-mask for "
                            "packed data, or drop --reset-position-ids")
    if args.eod_mask_loss:
        raise ArgumentError("--eod-mask-loss does not apply to instruction data (labels -100 mark what is not "
                            "learned; the closing tokens of answers are learned): drop it")


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
            raise ArgumentError(f"{' '.join(mixed)} go with --train-iters; with --train-samples use the "
                                "-samples flags (--lr-decay-samples, --lr-warmup-samples, --lr-wsd-decay-samples)")
        if args.lr_warmup_fraction is not None and args.lr_warmup_samples:
            raise ArgumentError("give only one of --lr-warmup-fraction and --lr-warmup-samples")


def _first_last_stage_layers(args: argparse.Namespace, pp: int) -> None:
    """--decoder-first/last-pipeline-num-layers as a --num-layer-list (the other stages share the rest evenly)."""
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
        raise ArgumentError(f"--num-layers {args.num_layers} minus {flags} ({rest} layers) cannot be split evenly "
                            f"over the other {others} pipeline stages: adjust them, or give --num-layer-list")
    middle = rest // others if others else 0
    counts = [middle] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    if len(set(counts)) > 1:  # even counts are the default split (no layout to record)
        args.num_layer_list = ",".join(map(str, counts))


def kernel_noop_flags(args: argparse.Namespace, device: str) -> list[str]:
    """Flags given on this launch that change nothing on ``device`` (logged once at start-up)."""
    names = [n for n in KERNEL_ONLY_FLAGS if getattr(args, n, False)]
    if device == "cpu":
        # The feature patches run torch reference kernels on CPU; the flags are still applied.
        pass
    if not args.fp16 and args.initial_loss_scale != 2**32:
        names.append("initial_loss_scale (only used with --fp16)")
    if args.distributed_backend and args.distributed_backend != {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device]:
        names.append(f"distributed_backend={args.distributed_backend} (the {device} backend is used)")
    return ["--" + n.replace("_", "-") for n in names]


# ---- megatron-core configs ------------------------------------------------------------------------------------
def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def rope_scaling_from_args(args: argparse.Namespace, recorded: dict | None) -> dict | None:
    """RoPE scaling of the run: the checkpoint's ``recorded`` one exactly, completed or contradicted by flags.

    Without ``--rope-scaling-type`` the recorded scaling is used as it is (all of its parameters, e.g. a
    Llama-3.1 ``original_max_position_embeddings``); flags that describe another scaling are refused.
    """
    kind = args.rope_scaling_type
    if kind is None:
        return dict(recorded) if recorded else None
    rec = recorded if recorded and recorded.get("rope_type") == kind else {}
    scaling: dict[str, Any] = {"rope_type": kind, "factor": args.rope_scaling_factor}
    if kind == "llama3":
        scaling.update(
            low_freq_factor=_first(args.low_freq_factor, rec.get("low_freq_factor"), 1.0),
            high_freq_factor=_first(args.high_freq_factor, rec.get("high_freq_factor"), 4.0),
            original_max_position_embeddings=_first(args.original_max_position_embeddings,
                                                    rec.get("original_max_position_embeddings"), 8192))
    if recorded is not None and scaling != recorded:
        raise ArgumentError(f"--rope-scaling-type {kind} gives rope_scaling {scaling} but the --load checkpoint "
                            f"records {recorded}: drop the RoPE scaling flags (the checkpoint's are used)")
    return scaling


def model_config_from_args(args: argparse.Namespace, vocab_rows: int, base: Any = None):
    """Our :class:`ModelConfig` for the flags (``base``: a checkpoint's config, for HF names and ids)."""
    from mindspeed_llm.models.families import ModelConfig

    recorded = base.rope_scaling if base is not None else None
    if args.rope_scaling_type is None and any(
            v is not None for v in (args.low_freq_factor, args.high_freq_factor, args.original_max_position_embeddings)):
        raise ArgumentError("--low-freq-factor/--high-freq-factor/--original-max-position-embeddings need "
                            "--rope-scaling-type llama3")
    fields = dict(
        num_layers=args.num_layers, hidden_size=args.hidden_size, ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads, num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels, vocab_size=vocab_rows, max_position_embeddings=args.max_position_embeddings,
        rotary_base=args.rotary_base, rope_scaling=rope_scaling_from_args(args, recorded),
        norm_epsilon=args.norm_epsilon, add_qkv_bias=args.add_qkv_bias, qk_layernorm=args.qk_layernorm,
        tie_word_embeddings=not args.untie_embeddings_and_output_weights,
        params_dtype=args.params_dtype, attention_dropout=args.attention_dropout,
    )
    if base is not None:
        return base.replace(**fields)
    arch, model_type = (("Qwen3ForCausalLM", "qwen3") if args.qk_layernorm else
                        ("Qwen2ForCausalLM", "qwen2") if args.add_qkv_bias else ("LlamaForCausalLM", "llama"))
    return ModelConfig(architecture=arch, model_type=model_type, **fields)


def transformer_config_from_args(args: argparse.Namespace, model_config) -> Any:
    """megatron-core ``TransformerConfig`` for the flags."""
    overrides: dict[str, Any] = dict(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        params_dtype=args.params_dtype,
        pipeline_dtype=args.params_dtype,
        bf16=args.bf16,
        fp16=False,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        init_method_std=args.init_method_std,
        use_cpu_initialization=args.use_cpu_initialization,
        gradient_accumulation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        # Megatron-LM's default for --swiglu: megatron's fused SwiGLU (its own forward/backward math;
        # on the CPU its compiled kernels are the eager ones of the ops-cpu patches).
        bias_activation_fusion=not args.no_bias_swiglu_fusion,
        apply_rope_fusion=False,
        cross_entropy_loss_fusion=args.cross_entropy_loss_fusion,
        cross_entropy_fusion_impl="native",
        batch_p2p_comm=False,  # gloo, and VPP with batched p2p gives wrong gradients upstream
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers if args.recompute_granularity == "full" else None,
        calculate_per_token_loss=args.calculate_per_token_loss,
        context_parallel_size=args.context_parallel_size,
    )
    if args.context_parallel_size > 1:  # megatron-core's spelling of the algorithm, read by the attention module
        overrides["cp_comm_type"] = CONTEXT_PARALLEL_ALGOS[args.context_parallel_algo]
        if args.context_parallel_algo == "hybrid_cp_algo":  # [Ulysses (a2a), ring (p2p)] sizes, megatron's order
            ulysses = args.ulysses_degree_in_cp
            overrides["hierarchical_context_parallel_sizes"] = [ulysses, args.context_parallel_size // ulysses]
    from mindspeed_llm.patches.features import transformer_config_overrides

    # --use-fused-swiglu routes megatron's MLP through the fused kernel only with bias_activation_fusion.
    overrides.update(transformer_config_overrides(use_fused_swiglu=args.use_fused_swiglu))
    if args.num_layer_list_parsed:
        from mindspeed_llm.models.families import pipeline_layout

        layout = pipeline_layout(args.num_layer_list_parsed)
        if layout is not None:
            overrides["pipeline_model_parallel_layout"] = layout
    config = model_config.to_transformer_config(**overrides)
    # Set after validation, as MindSpeed-LLM does: megatron-core 0.16.1 refuses variable_seq_lengths with its
    # default MoE token dispatcher even for dense models, which have no dispatcher.
    config.variable_seq_lengths = bool(getattr(args, "variable_seq_lengths", False))
    return config


def ddp_config_from_args(args: argparse.Namespace):
    """megatron-core ``DistributedDataParallelConfig`` for the flags."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.accumulate_allreduce_grads_in_fp32,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )


def optimizer_config_from_args(args: argparse.Namespace):
    """megatron-core ``OptimizerConfig`` for the flags."""
    from megatron.core.optimizer import OptimizerConfig

    return OptimizerConfig(
        optimizer=args.optimizer, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        bf16=args.bf16, fp16=False, params_dtype=args.params_dtype,
        loss_scale=args.loss_scale, initial_loss_scale=args.initial_loss_scale,
        min_loss_scale=args.min_loss_scale, loss_scale_window=args.loss_scale_window, hysteresis=args.hysteresis,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        sgd_momentum=args.sgd_momentum, use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_param_gather=args.overlap_param_gather, clip_grad=args.clip_grad,
        log_num_zeros_in_grad=args.log_num_zeros_in_grad,
    )


def env_int(name: str, default: int) -> int:
    """An integer environment variable set by torchrun (or ``default``)."""
    return int(os.environ.get(name, default))
