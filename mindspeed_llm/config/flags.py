"""The command lines of ``pretrain_gpt.py``, ``posttrain_gpt.py`` and ``inference.py``: flags only.

Flag names and defaults follow Megatron-LM (core_v0.16.x ``megatron/training/arguments.py``) for
everything MindSpeed-LLM's scripts pass, and MindSpeed-LLM's own spellings where it has them. A flag
we parse either works or is rejected with a message (``config/validate.py``); flags that only select
CUDA/NPU kernels are listed in :data:`KERNEL_ONLY_FLAGS` and reported once as no-ops where they mean
nothing (:func:`kernel_noop_flags`). Features declare their own flags (LoRA:
``mindspeed_llm.lora.config.add_lora_flags``).

Like everything in ``mindspeed_llm.config`` this module imports neither torch, megatron-core nor
transformers: ``--help`` and a bad flag answer before the heavy imports.
"""

from __future__ import annotations

import argparse
import sys

from mindspeed_llm.data.chat_templates import PROMPT_TYPES
from mindspeed_llm.dpo.config import STAGES as DPO_STAGES
from mindspeed_llm.dpo.config import add_dpo_flags
from mindspeed_llm.from_hf.config import add_from_hf_flags
from mindspeed_llm.lora.config import add_lora_flags


class ArgumentError(ValueError):
    """A launch whose flags cannot work; the message names the flag and the fix."""


# Flags that only choose a fused kernel or a communication overlap of CUDA/NPU libraries. On the
# CPU they change nothing (our feature patches decide per device what --use-* means).
KERNEL_ONLY_FLAGS = (
    "no_gradient_accumulation_fusion", "no_masked_softmax_fusion", "no_bias_dropout_fusion",
    "no_rope_fusion", "use_fused_ring_attention_update", "use_cp_send_recv_overlap",
    "no_async_tensor_model_parallel_allreduce", "no_create_attention_mask_in_dataloader",
    "moe_permutation_async_comm",
)
# MindSpeed-LLM's options that need MindSpeed's Ascend libraries, which no device here has: accepted, and the
# run goes on without them (the same values, as the text says), announced once (:func:`fallback_option_note`).
ASCEND_OPTIONS = {
    "reuse_fp32_param": "the fp32 main parameters are kept beside the bf16 ones instead of sharing their "
    "memory: the same values, more memory",
    "use_ascend_coc": "tensor-parallel communication is not overlapped with the matrix products: the same "
    "values",
}
FEATURE_KERNEL_FLAGS = ("use_flash_attn", "use_fused_rmsnorm", "use_fused_rotary_pos_emb", "use_fused_swiglu")

# megatron-core's TransformerConfig.cp_comm_type of each --context-parallel-algo ('a2a+p2p': hierarchical CP).
CONTEXT_PARALLEL_ALGOS = {"megatron_cp_algo": "p2p", "ulysses_cp_algo": "a2a", "hybrid_cp_algo": "a2a+p2p"}


# --moe-token-dispatcher-type choices: megatron-core's two dispatchers, MindSpeed-LLM's alltoall_seq (run as
# megatron-core's alltoall: the same exchange, the sequence split aside) and flex (DeepEP/HybridEP, refused).
MOE_DISPATCHERS = ("allgather", "alltoall", "alltoall_seq", "flex")
MOE_LOAD_BALANCING_TYPES = ("aux_loss", "seq_aux_loss", "none")


def moe_layer_freq(value: str) -> int | list[int]:
    """--moe-layer-freq: ``N`` (one MoE layer every N layers; MindSpeed-LLM's ``-1``: every layer) or a
    pattern ``"([0]*1+[1]*3)"`` / ``"[0,1,1,1]"`` (1: MoE layer, 0: dense), as Megatron-LM reads it.

    The pattern is read with a small evaluator of list literals, ``+`` and ``*`` (no ``eval``).
    """
    import ast

    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(value)

    try:
        pattern = ev(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, TypeError):
        pattern = None
    if not isinstance(pattern, list) or any(v not in (0, 1) for v in pattern):
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an integer nor a pattern of 0/1 layers such as \"([0]*1+[1]*3)\""
        )
    return pattern


def str2list(value: str) -> list[int]:
    """``"6,8,8,6"`` -> ``[6, 8, 8, 6]`` (--num-layer-list)."""
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def float_list(value: str) -> tuple[float, ...]:
    """``"1.0,1.02,1.05"`` -> ``(1.0, 1.02, 1.05)`` (MindSpeed-LLM's comma-separated factor lists)."""
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def add_long_context_rope_flags(g) -> None:
    """YaRN's and LongRoPE's settings (MindSpeed-LLM's spellings); unset: the checkpoint's, else HF's
    defaults (models/rope_scaling.py)."""
    g.add_argument("--rope-scaling-original-max-position-embeddings", type=int, default=None,
                   help="yarn/longrope: the window the model was pretrained on")
    g.add_argument("--rope-scaling-mscale", type=float, default=None, help="yarn: mscale")
    g.add_argument("--rope-scaling-mscale-all-dim", type=float, default=None, help="yarn: mscale_all_dim")
    g.add_argument("--beta-fast", type=float, default=None, help="yarn: beta_fast (HF default 32)")
    g.add_argument("--beta-slow", type=float, default=None, help="yarn: beta_slow (HF default 1)")
    g.add_argument("--long-factor", type=float_list, default=None,
                   help="longrope: comma-separated factors beyond the original window")
    g.add_argument("--short-factor", type=float_list, default=None,
                   help="longrope: comma-separated factors within the original window")


def build_parser() -> argparse.ArgumentParser:
    """The training parser (Megatron-LM flag names; LoRA's flags from ``mindspeed_llm.lora.config``)."""
    p = argparse.ArgumentParser(
        prog="pretrain_gpt.py", allow_abbrev=False,
        description="Megatron-compatible GPT pretraining on megatron-core (CPU, CUDA, NPU).",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--use-mcore-models", action="store_true", help="accepted: models are always megatron-core"
    )
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
    g.add_argument("--rope-scaling-type", choices=["llama3", "linear", "yarn", "longrope"], default=None)
    g.add_argument("--rope-scaling-factor", type=float, default=None)
    add_long_context_rope_flags(g)
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
    g.add_argument("--loss-compute-mode", choices=["default", "chunk"], default="default",
                   help="chunk: the output layer and the cross entropy together, --loss-chunk-size tokens "
                        "at a time, without keeping the [tokens, vocabulary] logits (MindSpeed-LLM's flag; "
                        "equal to default up to float32 rounding, docs/training.md)")
    g.add_argument("--loss-chunk-size", type=int, default=1024,
                   help="tokens per block of --loss-compute-mode chunk (1024)")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="scale gradients by the global batch's token count instead of per micro-batch means")
    g.add_argument("--spec", nargs="*", default=None, metavar="MODULE NAME",
                   help="the layer spec, as Megatron-LM / MindSpeed-LLM name it: local, or MindSpeed-LLM's "
                        "mindspeed_llm.tasks.models.spec.qwen3_spec layer_spec (Qwen3) or qwen2_moe_spec "
                        "(Qwen2-MoE); the family's megatron-core local layer is built, which these name")

    add_moe_flags(p)

    g = p.add_argument_group("kernels (CUDA/NPU only; no-ops on CPU)")
    g.add_argument("--use-flash-attn", action="store_true")
    g.add_argument("--use-fused-rmsnorm", action="store_true")
    g.add_argument("--use-fused-swiglu", action="store_true")
    g.add_argument("--use-fused-rotary-pos-emb", action="store_true")
    g.add_argument("--no-gradient-accumulation-fusion", action="store_true")
    g.add_argument("--no-masked-softmax-fusion", action="store_true")
    g.add_argument("--no-bias-dropout-fusion", action="store_true")
    g.add_argument(
        "--no-bias-swiglu-fusion",
        action="store_true",
        help="plain silu(x1) * x2 with autograd instead of megatron's fused SwiGLU (Megatron-LM's flag)",
    )
    g.add_argument("--no-rope-fusion", action="store_true")
    g.add_argument("--no-async-tensor-model-parallel-allreduce", action="store_true")
    g.add_argument("--use-fused-ring-attention-update", action="store_true")
    g.add_argument("--use-cp-send-recv-overlap", action="store_true")
    g.add_argument("--use-ascend-coc", action="store_true",
                   help="MindSpeed's Ascend communication-over-computation for TP layers: not available "
                        "here, the run goes on without it (announced)")

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
    g.add_argument("--expert-model-parallel-size", type=int, default=1,
                   help="MoE: the experts of each MoE layer are split over this many ranks (EP)")
    g.add_argument("--expert-tensor-parallel-size", type=int, default=None,
                   help="MoE: each expert's weights are split over this many ranks (ETP; default: TP)")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--distributed-backend", default=None, choices=["nccl", "gloo", "hccl"],
                   help="accepted for compatibility; the backend follows the device (gloo/nccl/hccl)")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10)
    g.add_argument("--no-shared-storage", action="store_true",
                   help="nodes do not share a file system: every node builds its own dataset index cache")
    g.add_argument(
        "--local-rank", "--local_rank", type=int, default=None, help="ignored: torchrun sets LOCAL_RANK"
    )

    g = p.add_argument_group("recompute")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--recompute-activations", action="store_true", help="= --recompute-granularity selective")

    g = p.add_argument_group("precision")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--reuse-fp32-param", action="store_true",
                   help="MindSpeed's bf16/fp32 parameter memory sharing (needs --bf16 and "
                        "--use-distributed-optimizer): not available here, the run goes on without it "
                        "(announced)")
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
    g.add_argument(
        "--valid-data-path", nargs="*", default=None, help="the validation split's prefix or blend"
    )
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
    g.add_argument(
        "--stage",
        default=None,
        choices=["sft", *DPO_STAGES],
        help="sft: instruction fine-tuning on preprocess_data.py's instruction data (--data-path PREFIX); "
        "dpo / simpo / orpo: preference alignment on pairwise data (docs/dpo.md)",
    )
    g.add_argument(
        "--is-instruction-dataset",
        action="store_true",
        help="--data-path is instruction data: PREFIX_packed_{input_ids,attention_mask,labels}_document",
    )
    g.add_argument(
        "--prompt-type",
        default=None,
        choices=list(PROMPT_TYPES),
        help="the chat template the data was preprocessed with (recorded in the checkpoint's args)",
    )
    g.add_argument("--no-pad-to-seq-lengths", action="store_true",
                   help="pad each micro-batch to its longest sample (rounded up to --pad-to-multiple-of), "
                        "not to --seq-length")
    g.add_argument("--variable-seq-lengths", action="store_true",
                   help="pipeline stages exchange each micro-batch's shape; implies --no-pad-to-seq-lengths")
    g.add_argument(
        "--pad-to-multiple-of",
        type=int,
        default=8,
        help="with --no-pad-to-seq-lengths: micro-batch lengths are rounded up to a multiple of this",
    )

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
    add_from_hf_flags(p)
    add_dpo_flags(p)

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


def add_moe_flags(p: argparse.ArgumentParser) -> None:
    """Mixture-of-experts model and routing flags: Megatron-LM's names, MindSpeed-LLM's spellings beside them.

    The parallel sizes (--expert-model-parallel-size, --expert-tensor-parallel-size) are in "parallelism".
    """
    g = p.add_argument_group("mixture of experts")
    g.add_argument("--num-experts", type=int, default=None, help="experts per MoE layer (none: dense)")
    g.add_argument("--moe-router-topk", type=int, default=2, help="experts each token is routed to")
    g.add_argument("--moe-ffn-hidden-size", "--moe-intermediate-size", dest="moe_ffn_hidden_size", type=int,
                   default=None, help="FFN hidden size of each expert (default: --ffn-hidden-size)")
    g.add_argument("--norm-topk-prob", action="store_true",
                   help="renormalise the top-k routing probabilities to sum to 1 (megatron-core's default "
                        "router; Qwen3-MoE, Mixtral); contradicts --moe-router-pre-softmax")
    g.add_argument("--moe-router-pre-softmax", action="store_true",
                   help="top-k of the softmax over all experts, not renormalised (Qwen2-MoE)")
    g.add_argument("--moe-shared-expert-intermediate-size", type=int, default=None,
                   help="FFN hidden size of the shared expert(s) beside the routed ones")
    g.add_argument("--n-shared-experts", type=int, default=None,
                   help="MindSpeed-LLM: shared experts of --moe-ffn-hidden-size each (= "
                        "--moe-shared-expert-intermediate-size N x --moe-ffn-hidden-size)")
    g.add_argument("--moe-shared-expert-gate", "--shared-expert-gate", dest="moe_shared_expert_gate",
                   action="store_true", help="a sigmoid gate on the shared expert's output (Qwen2-MoE)")
    g.add_argument("--moe-router-load-balancing-type", default="aux_loss", choices=MOE_LOAD_BALANCING_TYPES,
                   help="aux_loss (over the micro-batch), seq_aux_loss (per sequence) or none")
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0, help="weight of the load-balancing loss")
    g.add_argument("--moe-z-loss-coeff", type=float, default=None, help="weight of the router z-loss")
    g.add_argument("--moe-token-dispatcher-type", default="allgather", choices=MOE_DISPATCHERS,
                   help="how tokens reach the experts of other EP ranks: allgather or alltoall "
                        "(alltoall_seq runs as alltoall; flex is refused: it needs DeepEP on CUDA)")
    g.add_argument("--moe-grouped-gemm", action="store_true",
                   help="experts as megatron-core's grouped weights (mlp.experts.weight1/weight2), not "
                        "one MLP per expert (mlp.experts.local_experts.N)")
    g.add_argument("--moe-layer-freq", type=moe_layer_freq, default=1,
                   help="N: an MoE layer every N layers (-1: all), or a pattern like \"([0]*1+[1]*3)\"")
    g.add_argument("--first-k-dense-replace", type=int, default=None,
                   help="MindSpeed-LLM: the first K layers are dense (the rest follow --moe-layer-freq)")
    g.add_argument("--moe-permutation-async-comm", action="store_true",
                   help="accepted (MindSpeed-LLM's overlap of the permutation's communication): a no-op here")


def parse_args(argv: list[str] | None = None, extra_args_provider=None) -> argparse.Namespace:
    """Parse Megatron-style flags (``extra_args_provider(parser)`` may add more, as in Megatron-LM).

    The result is what the command line says; ``config.validate.validate_args`` completes and checks it.
    """
    parser = build_parser()
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    return parser.parse_args(argv)


def given_flags(argv: list[str] | None = None, extra_args_provider=None) -> set[str]:
    """Destinations of the flags written on the command line (not left at their defaults)."""
    parser = build_parser()
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_args(sys.argv[1:] if argv is None else argv)))


def parser_dests(parser: argparse.ArgumentParser) -> list[str]:
    """Every destination ``parser`` fills (``--help`` aside), each once, in declaration order."""
    return list(
        dict.fromkeys(a.dest for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest != "help")
    )


def kernel_noop_flags(args: argparse.Namespace, device: str) -> list[str]:
    """Flags given on this launch that change nothing on ``device`` (logged once at start-up)."""
    names = [n for n in KERNEL_ONLY_FLAGS if getattr(args, n, False)]
    if not args.fp16 and args.initial_loss_scale != 2**32:
        names.append("initial_loss_scale (only used with --fp16)")
    if (
        args.distributed_backend
        and args.distributed_backend != {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device]
    ):
        names.append(f"distributed_backend={args.distributed_backend} (the {device} backend is used)")
    return ["--" + n.replace("_", "-") for n in names]


def fallback_option_note(args: argparse.Namespace, device: str) -> str | None:
    """The one line naming MindSpeed's Ascend options given on this launch and what runs instead (or None)."""
    given = [n for n in ASCEND_OPTIONS if getattr(args, n, False)]
    if not given:
        return None
    parts = "; ".join(f"--{n.replace('_', '-')} ({ASCEND_OPTIONS[n]})" for n in given)
    return f"NOTE: MindSpeed's Ascend options are not available on {device} (no MindSpeed kernels); " \
        f"running without them: {parts}"


# ---- inference.py ------------------------------------------------------------------------------------------
TASKS = ("greedy", "do_sample", "chat")

# Parser groups of the training command line whose flags shape no part of generation: a training
# script's flag block is accepted as it is (MindSpeed-LLM's generate scripts carry such flags) and
# inference.py names the ones given in one NOTE line.
_TRAINING_ONLY_GROUPS = ("optimizer and schedule", "training", "recompute", "logging and evaluation")
_TRAINING_ONLY_FLAGS = (
    "save",
    "save_interval",
    "no_load_optim",
    "no_load_rng",
    "no_save_optim",
    "no_save_rng",
    "finetune",
    "exit_on_missing_checkpoint",
    "micro_batch_size",
    "global_batch_size",
    "accumulate_allreduce_grads_in_fp32",
    "loss_scale",
    "initial_loss_scale",
    "min_loss_scale",
    "loss_scale_window",
    "hysteresis",
    "data_cache_path",
    "split",
    "num_workers",
    "no_mmap_bin_files",
    "reset_position_ids",
    "eod_mask_loss",
    "stage",
    "is_instruction_dataset",
    "no_pad_to_seq_lengths",
    "variable_seq_lengths",
    "pad_to_multiple_of",
    "use_distributed_optimizer",
    "overlap_grad_reduce",
    "overlap_param_gather",
)
_DATA_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path", "mock_data")


def add_inference_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """inference.py's generation flags (an ``extra_args_provider`` for the training parser).

    The names follow MindSpeed-LLM's ``inference.py``; ``--prompt-type`` (the chat template of ``--task
    chat``) is the training parser's, the one the SFT data was made with.
    """
    parser.prog = "inference.py"
    parser.description = "Generate text from a Megatron checkpoint (any TP/PP) with megatron-core's KV cache."
    g = parser.add_argument_group("inference")
    g.add_argument(
        "--task",
        choices=TASKS,
        nargs="+",
        default=None,
        help="greedy / do_sample: continue each prompt (both: one after the other, as MindSpeed-LLM); "
        "chat: a conversation through --prompt-type's template. Default: do_sample when "
        "--temperature/--top-k/--top-p is given, else greedy",
    )
    g.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt (repeatable: one batch; with --task chat, the user turns in order)")
    g.add_argument("--prompts-file", default=None, metavar="PATH",
                   help="prompts, one per line (generated as batches of --max-batch-size)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt at most")
    g.add_argument("--max-batch-size", type=int, default=8, help="prompts generated together (one KV cache)")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default 1.0; 0 with --task do_sample is refused: use greedy)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sample within the top-p probability mass")
    g.add_argument("--history-turns", type=int, default=3,
                   help="--task chat: earlier exchanges kept in the conversation the model sees")
    g.add_argument("--use-kv-cache", dest="use_kv_cache", action="store_true", default=True,
                   help="keep keys/values of earlier positions (megatron-core's static inference context; "
                        "the default, accepted for MindSpeed-LLM's scripts)")
    g.add_argument("--no-kv-cache", dest="use_kv_cache", action="store_false",
                   help="recompute the whole sequence for every new token (for comparison)")
    return parser


def sampling_flags_given(args: argparse.Namespace) -> bool:
    """True when --temperature, --top-k or --top-p is on the command line."""
    return args.temperature is not None or args.top_k is not None or args.top_p is not None


def training_only_flags(parser: argparse.ArgumentParser, given: set[str]) -> list[str]:
    """The flags given on this launch that only matter for training (reported once, then ignored)."""
    dests = set(_TRAINING_ONLY_FLAGS)
    for group in parser._action_groups:
        if group.title in _TRAINING_ONLY_GROUPS:
            dests.update(a.dest for a in group._group_actions if a.dest != "seed")
    names = []
    for action in parser._actions:
        if action.dest in dests and action.dest in given and action.option_strings:
            names.append(action.option_strings[0])
    return sorted(set(names))
