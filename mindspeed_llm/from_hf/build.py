"""Start-up and save of a launch from an HF folder: the caches built by the tools' own code, the HF copies.

:func:`prepare_caches` (called by ``runtime.initialize.initialize_megatron`` before the flags are validated)
converts the HF ``--load`` folder with ``convert_ckpt.py``'s library function and preprocesses each raw
``--data-path`` file with ``preprocess_data.py``'s, each from the command line those tools would be given,
into the caches :mod:`mindspeed_llm.from_hf.config` names; one process builds each cache (global rank 0, or
every node's local rank 0 with ``--no-shared-storage``) while the others wait for it.
:func:`export_hf_copy` (called by the trainer after each save) writes the HF copy of a save with
``convert_ckpt.py``'s mg->hf.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.from_hf import cache
from mindspeed_llm.from_hf.config import FromHfError, FromHfPlan, RawSource, plan_from_args, preprocess_argv

_PLACEHOLDER = "<cache>"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
_started = time.time()


def _ranks() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))


def _user_error(exc: BaseException) -> ArgumentError:
    return ArgumentError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


# ---- start-up --------------------------------------------------------------------------------------------
def prepare_caches(args: argparse.Namespace) -> FromHfPlan:
    """Build or reuse what this launch's HF ``--load`` and raw ``--data-path`` files become (flags as parsed).

    Every process calls it; the builder of each cache builds it, the others wait until it is published.
    """
    try:
        plan = plan_from_args(args)
    except FromHfError as exc:
        raise ArgumentError(str(exc)) from None
    rank, local_rank = _ranks()
    builder = local_rank == 0 if args.no_shared_storage else rank == 0
    speaks = local_rank == 0  # one process per node says what it reuses or waits for
    if plan.unused_preprocess_flags and rank == 0:
        cache.log(
            f"NOTE: {' '.join(plan.unused_preprocess_flags)} unused: --data-path is preprocessed data "
            "already (they apply to raw files)"
        )
    if not plan.mg_dir and not plan.raw:
        return plan
    started = time.monotonic()
    note = (
        ""
        if args.no_shared_storage
        else " (built by global rank 0; nodes without shared storage: --no-shared-storage)"
    )
    try:
        if plan.mg_dir:
            _ensure_weights(args, plan, builder, note, speaks)
        for source in plan.raw:
            _ensure_data(args, source, builder, note, speaks)
    except FromHfError as exc:
        raise ArgumentError(str(exc)) from None
    if rank == 0:
        cache.log(f"> start-up caches ready in {time.monotonic() - started:.1f} s")
    return plan


def convert_argv(args: argparse.Namespace, plan: FromHfPlan, save_dir: str) -> list[str]:
    """convert_ckpt.py's hf->mg command line for this launch's layout."""
    from mindspeed_llm.convert.cli import build_parser

    argv = [
        "--load-model-type",
        "hf",
        "--save-model-type",
        "mg",
        "--load-dir",
        plan.hf_load,
        "--save-dir",
        save_dir,
        "--target-tensor-parallel-size",
        str(args.tensor_model_parallel_size),
        "--target-pipeline-parallel-size",
        str(args.pipeline_model_parallel_size),
        "--model-type-hf",
        plan.model_type_hf,
        "--make-vocab-size-divisible-by",
        str(args.make_vocab_size_divisible_by),
    ]
    if args.padded_vocab_size is not None:
        argv += ["--padded-vocab-size", str(args.padded_vocab_size)]
    if args.num_layer_list:
        argv += ["--num-layer-list", args.num_layer_list]
    if args.add_qkv_bias:
        argv.append("--add-qkv-bias")
    ep = getattr(args, "expert_model_parallel_size", None)
    if ep and "--target-expert-parallel-size" in build_parser()._option_string_actions:
        argv += ["--target-expert-parallel-size", str(ep)]  # the converter takes expert layouts (MoE)
    return argv


def _hf_weight_files(folder: str) -> list[str]:
    names = [os.path.join(folder, "config.json")]
    names += glob.glob(os.path.join(glob.escape(folder), "*.safetensors"))
    names += glob.glob(os.path.join(glob.escape(folder), "*.safetensors.index.json"))
    return [n for n in names if os.path.isfile(n)]


def _run_converter(argv: list[str], progress: bool) -> str:
    """convert_ckpt.py's library path: its parser, its options, its ``convert``."""
    from mindspeed_llm.convert.cli import build_parser, options_from_args
    from mindspeed_llm.convert.convert import convert
    from mindspeed_llm.convert.errors import CheckpointError, OutputWriteError
    from mindspeed_llm.lora.config import LoraError
    from mindspeed_llm.models.families import UnsupportedModelError

    opts = options_from_args(build_parser().parse_args(argv if progress else [*argv, "--no-progress"]))
    try:
        return convert(opts)
    except OutputWriteError as exc:
        raise _write_error(exc) from None
    except (CheckpointError, LoraError, UnsupportedModelError) as exc:
        raise FromHfError(str(exc)) from None


def _write_error(exc: Exception) -> Exception:
    """A tool's failed write: the OSError behind it (``cache.ensure`` names the cache and the fix), else its
    line."""
    from mindspeed_llm.io_errors import os_error_of

    return os_error_of(exc) or FromHfError(str(exc))


def _ensure_weights(
    args: argparse.Namespace, plan: FromHfPlan, builder: bool, note: str, speaks: bool
) -> None:
    argv = convert_argv(args, plan, _PLACEHOLDER)
    key = cache.make_key(kind="hf2mg", files=cache.file_stats(_hf_weight_files(plan.hf_load)), argv=argv)

    def build(folder: str) -> None:
        _run_converter([folder if a == _PLACEHOLDER else a for a in argv], progress=True)

    cache.ensure(
        plan.mg_dir,
        key,
        build,
        what="HF -> Megatron checkpoint",
        builder=builder,
        fix="give --mg-save-dir DIR on writable storage with room for the converted weights",
        source=plan.hf_load,
        info={"convert_ckpt.py": argv},
        shared_note=note,
        speaks=speaks,
        wait_minutes=args.cache_wait_minutes,
    )


def _tokenizer_files(folder: str) -> list[str]:
    return [p for p in (os.path.join(folder, n) for n in _TOKENIZER_FILES) if os.path.isfile(p)]


def _ensure_data(
    args: argparse.Namespace, source: RawSource, builder: bool, note: str, speaks: bool
) -> None:
    from mindspeed_llm.from_hf.config import launch_tokenizer

    tokenizer = launch_tokenizer(args)
    argv = preprocess_argv(args, source.path, _PLACEHOLDER, source.instruction, tokenizer)
    key = cache.make_key(
        kind="data",
        raw=cache.file_stats([source.path]),
        tokenizer=cache.file_stats(_tokenizer_files(tokenizer)),
        argv=argv,
    )

    def build(folder: str) -> None:
        from mindspeed_llm.data.arguments import parse_args
        from mindspeed_llm.data.errors import OutputWriteError, PreprocessError
        from mindspeed_llm.data.preprocess import preprocess

        os.makedirs(folder)
        prefix = os.path.join(folder, source.stem)
        try:
            preprocess(parse_args([prefix if a == _PLACEHOLDER else a for a in argv]))
        except PreprocessError as exc:
            raise FromHfError(f"--data-path {source.path}: {exc}") from None
        except OutputWriteError as exc:
            raise _write_error(exc) from None

    fix = "give --output-prefix PREFIX on writable storage with room for the preprocessed data"
    cache.ensure(
        source.cache_dir,
        key,
        build,
        what=f"preprocessed {os.path.basename(source.path)}",
        builder=builder,
        fix=fix,
        info={"preprocess_data.py": argv},
        shared_note=note,
        speaks=speaks,
        wait_minutes=args.cache_wait_minutes,
    )


# ---- at save ---------------------------------------------------------------------------------------------
def hf_copy_dir(args: argparse.Namespace, iteration: int) -> str:
    """MindSpeed-LLM's folder of a save's HF copy: ``{hf-save-dir or save}/mg2hf_iteration{N}``."""
    return os.path.join(args.hf_save_dir or args.save, f"mg2hf_iteration{iteration}")


def export_argv(args: argparse.Namespace, iteration: int, save_dir: str) -> list[str]:
    """convert_ckpt.py's mg->hf command line of the save at ``iteration`` (LoRA: base + adapter)."""
    argv = ["--load-model-type", "mg", "--save-model-type", "hf", "--save-dir", save_dir]
    if getattr(args, "lora_target_modules", None):
        argv += ["--load-dir", args.load, "--lora-load", args.save]
        if args.save_lora_to_hf:
            argv.append("--save-lora-to-hf")
    else:
        argv += ["--load-dir", args.save, "--load-iteration", str(iteration)]
    if args.hf_cfg_dir:
        argv += ["--hf-dir", args.hf_cfg_dir]
    return argv


def export_hf_copy(args: argparse.Namespace, iteration: int, *, last: bool) -> None:
    """After a save (every rank calls it): global rank 0 writes its HF copy, the others wait for it."""
    if not getattr(args, "enable_mg2hf_convert", False) or (args.only_convert_last_checkpoint and not last):
        return
    import torch

    from mindspeed_llm.runtime.errors import fail_together

    with fail_together():  # the ranks leave together, failing together if the export failed
        if torch.distributed.get_rank() == 0:
            _export(args, iteration)


def _export(args: argparse.Namespace, iteration: int) -> None:
    target = hf_copy_dir(args, iteration)
    argv = export_argv(args, iteration, _PLACEHOLDER)
    files = glob.glob(
        os.path.join(glob.escape(args.save), f"iter_{iteration:07d}", "**", "*"), recursive=True
    )
    key = cache.make_key(
        kind="mg2hf", argv=argv, files=cache.file_stats(f for f in files if os.path.isfile(f))
    )

    def build(folder: str) -> None:
        _run_converter([folder if a == _PLACEHOLDER else a for a in argv], progress=False)

    try:
        cache.ensure(
            target,
            key,
            build,
            what=f"HF copy of iteration {iteration}",
            builder=True,
            fix="give --hf-save-dir DIR on writable storage",
            source=args.save,
            info={"convert_ckpt.py": argv},
        )
    except FromHfError as exc:
        raise _user_error(exc) from None
