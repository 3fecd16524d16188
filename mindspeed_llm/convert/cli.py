"""Command line of ``convert_ckpt.py`` (MindSpeed-LLM's flag names).

Parsing and the first checks import neither torch nor transformers: ``--help`` and a wrong
``--load-dir`` answer at once; the converter is imported after.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import TYPE_CHECKING

from mindspeed_llm.console import print_error
from mindspeed_llm.convert.errors import (
    CheckpointError,
    OutputWriteError,
    VerificationError,
    VerificationUnavailable,
    check_load_dir,
)
from mindspeed_llm.lora.config import LoraError, add_lora_flags, check_lora_flags, recorded_flags_given
from mindspeed_llm.models.names import MODEL_TYPE_HF_CHOICES
from mindspeed_llm.signals import Terminated, exit_on_signals, exit_status

if TYPE_CHECKING:
    from mindspeed_llm.convert.convert import ConvertOptions


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 5GB or 500MB")
    return int(float(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2)])


def _iteration(text: str) -> str:
    if text != "release" and not re.fullmatch(r"\d{1,12}", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an iteration number (e.g. 2000) or 'release'")
    return text.strip()


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer counts (6,8,8,6)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags as MindSpeed-LLM's convert_ckpt.py)."""
    p = argparse.ArgumentParser(
        prog="convert_ckpt.py",
        description=(
            "Convert checkpoints: HuggingFace <-> Megatron-mcore legacy layout, and mg -> mg resharding."
        ),
    )
    p.add_argument(
        "--use-mcore-models",
        action="store_true",
        help="accepted for MindSpeed compatibility; megatron-core models are the only kind written",
    )
    p.add_argument("--model-type", default="GPT", choices=["GPT"], help="only GPT (decoder-only) models")
    p.add_argument("--load-model-type", required=True, choices=["hf", "mg"])
    p.add_argument("--save-model-type", required=True, choices=["hf", "mg"])
    p.add_argument("--load-dir", required=True, help="HF folder (hf) or Megatron checkpoint folder (mg)")
    p.add_argument("--save-dir", required=True,
                   help="output folder; for mg->hf an original HF folder means its mg2hf/ subfolder")
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--target-expert-parallel-size", type=int, default=1,
                   help="MoE: split each layer's experts over this many EP ranks (mp_rank_*_EEE files)")
    p.add_argument("--expert-tensor-parallel-size", type=int, default=None,
                   help="MoE: TP of the experts; the legacy layout needs it equal to the target TP (default)")
    p.add_argument("--moe-grouped-gemm", action="store_true",
                   help="MoE: write the experts as megatron-core's grouped weights (mlp.experts.weight1/"
                        "weight2) instead of one MLP each (mlp.experts.local_experts.N); sources are read "
                        "in either layout")
    p.add_argument("--num-layer-list", type=_layer_list, default=None,
                   help="layers per pipeline stage, e.g. 6,8,8,6 (default: even)")
    p.add_argument("--add-qkv-bias", action="store_true", help="q/k/v projections have biases (Qwen2/2.5)")
    p.add_argument("--model-type-hf", default=None, choices=MODEL_TYPE_HF_CHOICES,
                   help="model family; checked against config.json's architecture")
    p.add_argument("--params-dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="convert the weights to this dtype (default: keep the source's)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=1,
                   help="pad the vocabulary to a multiple of this x TP (default 1)")
    p.add_argument(
        "--padded-vocab-size", type=int, default=None, help="pad the vocabulary to exactly this size"
    )
    p.add_argument("--tokenizer-model", default=None, help="recorded in the checkpoint's args")
    p.add_argument("--hf-dir", default=None,
                   help="mg->hf: the original HF folder for config and tokenizer (default: the one recorded)")
    p.add_argument("--load-iteration", default=None, type=_iteration,
                   help="mg sources: iteration to read (default: latest_checkpointed_iteration.txt)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a --save-dir that holds an earlier output of the same kind (an HF export for "
        "mg->hf, a converted Megatron checkpoint, model only, for hf->mg and mg->mg)",
    )
    p.add_argument(
        "--overwrite-training-checkpoint",
        action="store_true",
        help="also replace a --save-dir holding a training checkpoint (optimizer, scheduler or RNG "
        "state, several iterations): that training state is deleted",
    )
    p.add_argument(
        "--overwrite-hf-model",
        action="store_true",
        help="also replace a --save-dir holding an HF model this tool did not write: it is deleted",
    )
    p.add_argument("--max-shard-size", type=_size, default=_size("5GB"), help="HF output shard size (5GB)")
    p.add_argument("--verify", action="store_true",
                   help="compare logits of transformers' model and our megatron-core model after converting")
    p.add_argument("--verify-tolerance", type=float, default=1e-4)
    p.add_argument("--verify-tokens", type=int, default=16)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_lora_flags(p, converter=True)
    return p


def options_from_args(args: argparse.Namespace):
    """Parsed flags -> :class:`~mindspeed_llm.convert.convert.ConvertOptions`."""
    from mindspeed_llm.convert.convert import ConvertOptions
    from mindspeed_llm.models.families import parse_dtype

    iteration = args.load_iteration
    if iteration is not None and iteration != "release":
        iteration = int(iteration)
    return ConvertOptions(
        load_model_type=args.load_model_type,
        save_model_type=args.save_model_type,
        load_dir=args.load_dir,
        save_dir=args.save_dir,
        target_tp=args.target_tensor_parallel_size,
        target_pp=args.target_pipeline_parallel_size,
        target_ep=args.target_expert_parallel_size,
        target_etp=args.expert_tensor_parallel_size,
        moe_grouped_gemm=args.moe_grouped_gemm,
        num_layer_list=args.num_layer_list,
        params_dtype=parse_dtype(args.params_dtype) if args.params_dtype else None,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        padded_vocab_size=args.padded_vocab_size,
        add_qkv_bias=args.add_qkv_bias,
        model_type_hf=args.model_type_hf,
        hf_dir=args.hf_dir,
        tokenizer_model=args.tokenizer_model,
        iteration=iteration,
        overwrite=args.overwrite,
        overwrite_training_checkpoint=args.overwrite_training_checkpoint,
        overwrite_hf_model=args.overwrite_hf_model,
        max_shard_size=args.max_shard_size,
        progress=not args.no_progress,
        lora_load=args.lora_load,
        save_lora_to_hf=args.save_lora_to_hf,
        lora_expected=recorded_flags_given(args),
    )


def check_verify_length(opts: ConvertOptions, tokens: int) -> None:
    """--verify from an HF folder: refuse more tokens than an active sliding window before anything is
    written."""
    from mindspeed_llm.models.families import ModelConfig

    config = os.path.join(opts.load_dir, "config.json")
    if opts.load_model_type != "hf" or not os.path.isfile(config):
        return
    try:
        cfg = ModelConfig.from_hf_config(config)
    except (KeyError, ValueError):
        return  # the conversion itself reports a bad config.json, with its path
    cfg.check_sequence_length(tokens, "--verify-tokens")


def needs_megatron_core(args: argparse.Namespace) -> bool:
    """Whether this conversion imports megatron-core (with the patch layer applied first): reading a Megatron
    checkpoint (its pickled args, megatron-core's torch_dist reader) or --verify (a megatron-core model).

    hf -> mg without --verify is torch, safetensors and our own writer only: no megatron-core import (about
    half of that process's CPU seconds, most of a test suite's converter launches).
    """
    return args.verify or args.load_model_type == "mg"


def main(argv: list[str] | None = None) -> int:
    """Run a conversion; exit 0 done, 1 verification failed or the output could not be written, 2 bad
    input, 3 --verify could not run, 130 Ctrl-C, 143 SIGTERM (one line on stderr, never a traceback)."""
    args = build_parser().parse_args(argv)
    with exit_on_signals():
        try:
            check_load_dir(
                args.load_dir, args.load_model_type
            )  # before the heavy imports: a typo answers at once
            check_lora_flags(args, converter=True)
            from mindspeed_llm.models.families import UnsupportedModelError

            if needs_megatron_core(args):
                import mindspeed_llm

                mindspeed_llm.apply_base_patches()
        except (CheckpointError, LoraError) as exc:
            print_error(str(exc))
            return 2
        except (KeyboardInterrupt, Terminated) as exc:
            return _interrupted(exc, None, args.save_dir)
        written = None
        try:
            from mindspeed_llm.convert.convert import convert

            opts = options_from_args(args)
            if args.verify:
                check_verify_length(opts, args.verify_tokens)
            written = convert(opts)
            print(f"converted {opts.load_model_type} -> {opts.save_model_type}: {written}")
            if args.verify:
                from mindspeed_llm.convert.verify import verify_after_convert

                verify_after_convert(
                    opts, written, tolerance=args.verify_tolerance, num_tokens=args.verify_tokens
                )
        except (CheckpointError, LoraError, UnsupportedModelError) as exc:
            print_error(str(exc))
            return 2
        except (VerificationError, OutputWriteError) as exc:
            print_error(str(exc))
            return 1
        except VerificationUnavailable as exc:
            print_error(f"--verify could not run: {exc}; {written} was written but is not verified")
            return 3
        except (KeyboardInterrupt, Terminated) as exc:
            return _interrupted(exc, written or getattr(exc, "committed_output", None), args.save_dir)
    return 0


def _interrupted(exc: BaseException, written: str | None, save_dir: str) -> int:
    what = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
    kept = f"{written} is complete" if written else f"temporary files removed, {save_dir} unchanged"
    print_error(f"{what}: {kept}")
    return exit_status(exc)
