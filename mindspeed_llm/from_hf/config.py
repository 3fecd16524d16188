"""Training straight from an HF folder and raw data: the flags, their checks, and where the caches live.

MindSpeed-LLM's spellings and meanings (its ``train_from_hf.md``): ``--load`` may name an HF model folder
(``config.json`` + ``*.safetensors``); ``--enable-hf2mg-convert`` (automatic when ``--load`` holds
safetensors) converts it once into ``--mg-save-dir`` (default ``{load}/megatron_cache_tp{TP}pp{PP}ep{EP}``)
and training loads that; ``--enable-mg2hf-convert`` (automatic with an HF ``--load`` and no conversion flag)
writes an HF copy of every save into ``{hf-save-dir or save}/mg2hf_iteration{N}``. A ``--data-path`` entry
that is a raw file (jsonl, json, parquet, csv, txt, arrow) is preprocessed at start-up with
``preprocess_data.py``'s flags (``--handler-name``, ``--json-keys``, ``--prompt-type``, ``--map-keys``,
``--pack``, ``--neat-pack``, ``--append-eod``, ...) into a cache next to it (or under ``--output-prefix``).

:func:`add_from_hf_flags` declares the flags, :func:`check_from_hf_flags` checks them and
:func:`plan_from_args` says what a launch converts and preprocesses and where the results live (the same
answer before and after the build: the locations do not depend on the files' contents, the caches' keys
do). ``config/validate.py`` points ``--load`` and ``--data-path`` at those locations.

Torch-free: the command lines import it before the heavy modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from mindspeed_llm.data.handlers import (
    DEFAULT_KEYS,
    HANDLERS,
    INSTRUCTION_HANDLER_NAMES,
    PAIRWISE_HANDLER_NAMES,
    is_instruction_handler,
)
from mindspeed_llm.dpo.config import STAGES as PAIRWISE_STAGES
from mindspeed_llm.models.names import ARCHITECTURE_MODEL_TYPE_HF, MODEL_TYPE_HF_CHOICES


class FromHfError(ValueError):
    """A launch from an HF folder or raw data that cannot work; one line: the flag or path, the fix."""


RAW_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow")
CACHE_SUFFIX = ".mindspeed_cache"  # data caches: <prefix base>.mindspeed_cache-<settings hash>/
MARKER = ".mindspeed_llm_cache.json"  # inside a published cache: what made it (its key)
CACHE_VERSION = 1
DEFAULT_CACHE_WAIT_MINUTES = 60.0

# HF architectures -> the --model-type-hf value inferred when the flag is absent (models/families.py's rows).
_ARCHITECTURE_TYPES = ARCHITECTURE_MODEL_TYPE_HF

GROUP_TITLE = (
    "training from an HF folder and raw data (MindSpeed-LLM's --enable-hf2mg-convert; docs/train_from_hf.md)"
)
PREPROCESS_TITLE = "raw --data-path files, preprocessed at start-up (preprocess_data.py's flags)"

# preprocess_data.py's options a training launch passes through (dest -> its flag there).
_PREPROCESS_FLAGS = (
    "handler_name",
    "json_keys",
    "workers",
    "n_subs",
    "pack",
    "neat_pack",
    "append_eod",
    "map_keys",
    "output_prefix",
    "skip_bad_rows",
    "enable_thinking",
)


def _thinking(value: str) -> str:
    lowered = value.lower()
    if lowered not in ("true", "false", "none"):
        raise argparse.ArgumentTypeError(f"{value!r}: use true, false or none")
    return lowered


def add_from_hf_flags(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of this path on the training command line (two groups: weights, raw data)."""
    g = parser.add_argument_group(GROUP_TITLE)
    g.add_argument(
        "--enable-hf2mg-convert",
        action="store_true",
        help="--load is an HF folder: convert it once (cached in --mg-save-dir) and train from it; "
        "automatic when --load holds *.safetensors",
    )
    g.add_argument(
        "--model-type-hf",
        default=None,
        choices=MODEL_TYPE_HF_CHOICES,
        help="the HF model family (default: read from --load's config.json)",
    )
    g.add_argument(
        "--mg-save-dir",
        default=None,
        help="where the converted checkpoint is cached (default {load}/megatron_cache_tp{TP}pp{PP}ep{EP})",
    )
    g.add_argument(
        "--enable-mg2hf-convert",
        action="store_true",
        help="write an HF copy of every save (automatic with an HF --load and no conversion flag)",
    )
    g.add_argument(
        "--hf-save-dir",
        default=None,
        help="the HF copies go to {hf-save-dir}/mg2hf_iteration{N} (default: under --save)",
    )
    g.add_argument(
        "--hf-cfg-dir",
        default=None,
        help="config and tokenizer files of the HF copies (default: the HF --load folder)",
    )
    g.add_argument(
        "--only-convert-last-checkpoint", action="store_true", help="an HF copy of the last save only"
    )
    g.add_argument(
        "--save-lora-to-hf",
        action="store_true",
        help="LoRA runs: the HF copies are peft adapter folders (default: weights merged into the base)",
    )
    g.add_argument(
        "--cache-wait-minutes",
        type=float,
        default=DEFAULT_CACHE_WAIT_MINUTES,
        help="how long the ranks that do not build a start-up cache wait for it before stopping with an "
        f"error (default {DEFAULT_CACHE_WAIT_MINUTES:g}: a builder that died must not leave them waiting)",
    )
    g = parser.add_argument_group(PREPROCESS_TITLE)
    g.add_argument(
        "--handler-name",
        default=None,
        choices=[*HANDLERS, *INSTRUCTION_HANDLER_NAMES],
        help="how raw rows become documents (default GeneralPretrainHandler; SFT: an *InstructionHandler)",
    )
    g.add_argument("--json-keys", nargs="+", default=None, help="columns to tokenize (default: text)")
    g.add_argument("--workers", type=int, default=None, help="tokenizer processes (default 1)")
    g.add_argument("--n-subs", type=int, default=None, help="input subsets processed concurrently")
    g.add_argument("--pack", action="store_true", help="SFT: pack samples into sequences of --seq-length")
    g.add_argument("--neat-pack", action="store_true", help="with --pack: number the samples of a pack")
    g.add_argument("--append-eod", action="store_true", help="append EOS to every document")
    g.add_argument("--map-keys", default=None, help="SFT: JSON dict renaming columns")
    g.add_argument(
        "--output-prefix",
        default=None,
        help="where the preprocessed data is cached (default: next to the raw file)",
    )
    g.add_argument("--skip-bad-rows", action="store_true", help="skip rows that cannot be read")
    g.add_argument(
        "--enable-thinking",
        type=_thinking,
        default=None,
        help="qwen3 template: true (the default of --prompt-type qwen3: an empty <think> block "
        "learned in the last answer); false is refused",
    )


def from_hf_dests() -> tuple[str, ...]:
    """The parser destinations this module declares."""
    parser = argparse.ArgumentParser(add_help=False)
    add_from_hf_flags(parser)
    return tuple(a.dest for a in parser._actions if a.dest != "help")


# ---- what a launch converts and preprocesses --------------------------------------------------------------
@dataclass(frozen=True)
class RawSource:
    """One raw --data-path file and the cache its preprocessing lives in."""

    path: str  # the raw file as given
    cache_dir: str  # <base>.mindspeed_cache-<settings>/ (published whole)
    stem: str  # output prefix name inside the cache
    instruction: bool

    @property
    def prefix(self) -> str:
        """preprocess_data.py's --output-prefix inside the cache."""
        return os.path.join(self.cache_dir, self.stem)

    @property
    def training_path(self) -> str:
        """What --data-path names after the build."""
        return self.prefix if self.instruction else f"{self.prefix}_text_document"


@dataclass(frozen=True)
class FromHfPlan:
    """What a launch builds at start-up and what its flags name afterwards."""

    hf_load: str | None  # the HF folder --load named (None: --load is a Megatron checkpoint or absent)
    mg_dir: str | None  # the converted checkpoint's folder (= --load after the build)
    model_type_hf: str | None
    raw: tuple[RawSource, ...]
    data_path: tuple[str, ...] | None  # --data-path after the build (weights kept), None: unchanged
    mg2hf: bool
    unused_preprocess_flags: tuple[str, ...]  # preprocessing flags given with already preprocessed data


def holds_safetensors(folder: str | None) -> bool:
    """True when ``folder`` holds ``*.safetensors`` (MindSpeed-LLM's cue for an HF --load)."""
    if not folder or not os.path.isdir(folder):
        return False
    try:
        return any(n.endswith(".safetensors") for n in os.listdir(folder))
    except OSError:
        return False


def is_megatron_checkpoint(folder: str) -> bool:
    """A Megatron checkpoint folder: its tracker, an iter_*/release folder (torch-free, by name)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return (
        "latest_checkpointed_iteration.txt" in names
        or "release" in names
        or any(n.startswith("iter_") for n in names)
    )


def infer_model_type(hf_dir: str, given: str | None) -> str:
    """--model-type-hf, or the type of ``hf_dir/config.json``'s architecture; one line when unknown."""
    config = os.path.join(hf_dir, "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            architectures = json.load(f).get("architectures") or []
    except FileNotFoundError:
        raise FromHfError(
            f"--load {hf_dir} holds safetensors but no config.json: download the whole HF "
            "model folder (config.json, tokenizer, *.safetensors)"
        ) from None
    except (OSError, ValueError) as exc:
        raise FromHfError(
            f"{config} cannot be read ({str(exc).splitlines()[0][:80]}): download it again"
        ) from None
    arch = architectures[0] if architectures else None
    if given is not None:
        return given
    if arch not in _ARCHITECTURE_TYPES:
        raise FromHfError(
            f"--load {hf_dir}: model type {arch or 'unknown (no architectures in config.json)'} "
            f"is not supported; supported: {', '.join(sorted(_ARCHITECTURE_TYPES))}"
        )
    return _ARCHITECTURE_TYPES[arch]


def is_raw_file(path: str) -> bool:
    """A --data-path entry that is a raw file to preprocess (by extension), not a dataset prefix."""
    return path.lower().endswith(RAW_EXTENSIONS)


def _tokens(data_path: Sequence[str] | None) -> list[str]:
    """The words of a --data-path (prefixes, or weight prefix pairs)."""
    return [s for item in data_path or [] for s in item.split()]


def _settings_hash(args: argparse.Namespace, raw: str, instruction: bool, tokenizer: str) -> str:
    """What names a data cache folder: the preprocessing settings (the files' contents go in its key)."""
    settings = {
        "raw": os.path.abspath(raw),
        "tokenizer": os.path.abspath(tokenizer),
        "argv": preprocess_argv(args, raw, "PREFIX", instruction, tokenizer),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def launch_tokenizer(args: argparse.Namespace) -> str | None:
    """The tokenizer folder of a launch: --tokenizer-name-or-path, else an HF --load."""
    given = args.tokenizer_name_or_path or args.tokenizer_model
    if given or args.tokenizer_type == "NullTokenizer":
        return given
    return args.load if holds_safetensors(args.load) else None


def preprocess_argv(
    args: argparse.Namespace, raw: str, output_prefix: str, instruction: bool, tokenizer: str
) -> list[str]:
    """preprocess_data.py's command line for one raw file of this launch (its flags passed through)."""
    argv = [
        "--input",
        raw,
        "--output-prefix",
        output_prefix,
        "--tokenizer-type",
        "PretrainedFromHF",
        "--tokenizer-name-or-path",
        tokenizer,
        "--handler-name",
        args.handler_name or "GeneralPretrainHandler",
    ]
    if args.json_keys:
        argv += ["--json-keys", *args.json_keys]
    for flag, value in (("--workers", args.workers), ("--n-subs", args.n_subs)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (("--append-eod", args.append_eod), ("--skip-bad-rows", args.skip_bad_rows)):
        if on:
            argv.append(flag)
    if instruction:
        argv += ["--prompt-type", args.prompt_type]
        if args.map_keys is not None:
            argv += ["--map-keys", args.map_keys]
        if args.pack:  # MindSpeed-LLM: --seq-length is the length of a pack
            argv += ["--pack", "--seq-length", str(args.seq_length)]
        if args.neat_pack:
            argv.append("--neat-pack")
    return argv


def _raw_source(
    args: argparse.Namespace, raw: str, instruction: bool, several: bool, tokenizer: str
) -> RawSource:
    stem = os.path.basename(raw).rsplit(".", 1)[0] or "data"
    if args.output_prefix:
        base = f"{args.output_prefix}_{stem}" if several else args.output_prefix
    else:
        base = os.path.join(os.path.dirname(os.path.abspath(raw)), stem)
    cache = f"{base}{CACHE_SUFFIX}-{_settings_hash(args, raw, instruction, tokenizer)}"
    return RawSource(path=raw, cache_dir=cache, stem=stem, instruction=instruction)


def is_cache_prefix(prefix: str) -> bool:
    """True for a --data-path prefix inside a data cache this module builds at start-up."""
    return CACHE_SUFFIX + "-" in os.path.basename(os.path.dirname(prefix))


def _given_preprocess_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--" + d.replace("_", "-") for d in _PREPROCESS_FLAGS if getattr(args, d, None) not in (None, False)
    ]


def plan_from_args(args: argparse.Namespace) -> FromHfPlan:
    """What this launch converts and preprocesses, and where (from the flags as given); FromHfError if it
    cannot work."""
    load = args.load
    hf = bool(load) and holds_safetensors(load)
    if args.enable_hf2mg_convert and not load:
        raise FromHfError(
            "--enable-hf2mg-convert needs --load HF_MODEL_FOLDER (the folder with config.json and "
            "*.safetensors); training from random weights is the launch without it"
        )
    if args.enable_hf2mg_convert and not hf:
        if load and os.path.isdir(load) and is_megatron_checkpoint(load):
            raise FromHfError(
                f"--enable-hf2mg-convert: --load {load} is a Megatron checkpoint, not an HF folder; "
                "drop --enable-hf2mg-convert to train from it"
            )
        raise FromHfError(
            f"--enable-hf2mg-convert: --load {load} holds no *.safetensors: point it at the HF "
            "model folder (config.json, tokenizer, *.safetensors)"
        )
    resume = bool(args.save) and os.path.realpath(load or "") == os.path.realpath(args.save)  # auto-resume
    if load and os.path.isdir(load) and not hf and not resume and not is_megatron_checkpoint(load):
        try:
            empty = not os.listdir(load)
        except OSError:
            empty = False
        if not empty:
            raise FromHfError(
                f"--load {load} is neither an HF model folder (config.json + *.safetensors) nor a "
                "Megatron checkpoint (latest_checkpointed_iteration.txt, iter_*/): point it at one"
            )
    if hf and getattr(args, "use_checkpoint_args", False):
        raise FromHfError(
            f"--use-checkpoint-args reads the model flags from a Megatron checkpoint; --load {load} is an HF "
            "folder: give the model flags (as MindSpeed-LLM's scripts do) and drop --use-checkpoint-args"
        )
    model_type = infer_model_type(load, args.model_type_hf) if hf else None
    if args.model_type_hf is not None and not hf:
        raise FromHfError(
            f"--model-type-hf {args.model_type_hf} is for an HF --load folder (it names its family); "
            f"--load {load} is not one: drop the flag"
        )
    mg_dir = None
    if hf:
        ep = getattr(args, "expert_model_parallel_size", 1) or 1
        mg_dir = args.mg_save_dir or os.path.join(
            load,
            f"megatron_cache_tp{args.tensor_model_parallel_size}pp{args.pipeline_model_parallel_size}ep{ep}",
        )
        if os.path.isdir(mg_dir) and not is_megatron_checkpoint(mg_dir) and os.listdir(mg_dir):
            if not os.path.isfile(os.path.join(mg_dir, MARKER)):
                raise FromHfError(
                    f"--mg-save-dir {mg_dir} holds files that are not a converted checkpoint: give an "
                    "empty or new folder"
                )
    elif args.mg_save_dir:
        raise FromHfError(
            "--mg-save-dir is where an HF --load folder is converted to: --load is not an HF folder "
            f"({load}); drop --mg-save-dir"
        )
    conversion_flags = args.enable_hf2mg_convert or args.enable_mg2hf_convert
    mg2hf = args.enable_mg2hf_convert or (hf and not conversion_flags)
    mg2hf = bool(mg2hf and args.save)
    if args.enable_mg2hf_convert and not args.save:
        raise FromHfError("--enable-mg2hf-convert writes HF copies of the saves: give --save")
    for flag, value in (
        ("--hf-save-dir", args.hf_save_dir),
        ("--hf-cfg-dir", args.hf_cfg_dir),
        ("--only-convert-last-checkpoint", args.only_convert_last_checkpoint),
        ("--save-lora-to-hf", args.save_lora_to_hf),
    ):
        if value and not mg2hf:
            raise FromHfError(
                f"{flag} shapes the HF copies of the saves: add --enable-mg2hf-convert and --save, or drop it"
            )
    if args.save_lora_to_hf and not getattr(args, "lora_target_modules", None):
        raise FromHfError(
            "--save-lora-to-hf writes the LoRA adapter of a LoRA run: add --lora-target-modules or drop it"
        )
    if args.hf_cfg_dir and not os.path.isfile(os.path.join(args.hf_cfg_dir, "config.json")):
        raise FromHfError(
            f"--hf-cfg-dir {args.hf_cfg_dir} holds no config.json: point it at the HF model folder"
        )
    if mg2hf and args.no_shared_storage:
        raise FromHfError(
            "--enable-mg2hf-convert reads every rank's save files in one process: it needs --save on "
            "storage all nodes share; drop --no-shared-storage or the HF copies"
        )
    if not args.cache_wait_minutes > 0:
        raise FromHfError(f"--cache-wait-minutes {args.cache_wait_minutes:g}: must be positive")
    raw, data_path = _raw_sources(args)
    unused = () if raw else tuple(_given_preprocess_flags(args))
    return FromHfPlan(
        hf_load=load if hf else None,
        mg_dir=mg_dir,
        model_type_hf=model_type,
        raw=raw,
        data_path=data_path,
        mg2hf=mg2hf,
        unused_preprocess_flags=unused,
    )


def _instruction(args: argparse.Namespace) -> bool:
    """The launch trains on a PREFIX of instruction data (--stage sft) or pairwise data (--stage dpo|...)."""
    return bool(args.stage == "sft" or args.is_instruction_dataset or _pairwise(args))


def _pairwise(args: argparse.Namespace) -> bool:
    return bool(args.stage in PAIRWISE_STAGES or getattr(args, "is_pairwise_dataset", False))


def _raw_sources(args: argparse.Namespace) -> tuple[tuple[RawSource, ...], tuple[str, ...] | None]:
    if not args.data_path:
        for name in ("train_data_path", "valid_data_path", "test_data_path"):
            raw = [p for p in _tokens(getattr(args, name)) if is_raw_file(p)]
            if raw:
                flag = "--" + name.replace("_", "-")
                raise FromHfError(
                    f"{flag} {raw[0]}: raw files are preprocessed from --data-path only (--split "
                    "divides them); preprocess it with preprocess_data.py, or use --data-path"
                )
        return (), None
    words = _tokens(args.data_path)
    raw_paths = list(dict.fromkeys(p for p in words if is_raw_file(p)))
    if not raw_paths:
        return (), None
    instruction = _instruction(args)
    _check_preprocess_flags(args, instruction)
    for p in raw_paths:
        if not os.path.isfile(p):
            raise FromHfError(
                f"--data-path {p}: no such file (a raw {os.path.splitext(p)[1]} file to "
                "preprocess at start-up)"
            )
        if not os.access(p, os.R_OK):
            raise FromHfError(f"--data-path {p} cannot be read (permission denied)")
    tokenizer = launch_tokenizer(args)
    if not tokenizer:
        raise FromHfError(
            "raw --data-path files are tokenized at start-up: give --tokenizer-name-or-path "
            "HF_MODEL_FOLDER (or --load an HF folder, whose tokenizer is then used)"
        )
    sources = tuple(_raw_source(args, p, instruction, len(raw_paths) > 1, tokenizer) for p in raw_paths)
    by_path = {s.path: s for s in sources}
    return sources, tuple(by_path[w].training_path if w in by_path else w for w in words)


def _check_preprocess_flags(args: argparse.Namespace, instruction: bool) -> None:
    handler = args.handler_name
    if instruction and _pairwise(args):
        stage = args.stage or "dpo"
        if handler not in PAIRWISE_HANDLER_NAMES:
            raise FromHfError(
                f"--stage {stage} with a raw --data-path needs a pairwise handler: --handler-name "
                f"{' or '.join(PAIRWISE_HANDLER_NAMES)}" + (f" (not {handler})" if handler else "")
            )
        if args.pack or args.neat_pack:
            raise FromHfError(f"--pack: pairwise data is not packed (--stage {stage}); drop it")
    if instruction:
        if handler is None or not is_instruction_handler(handler):
            raise FromHfError(
                f"--stage sft with a raw --data-path needs an instruction handler: --handler-name "
                f"{' or '.join(INSTRUCTION_HANDLER_NAMES)}" + (f" (not {handler})" if handler else "")
            )
        if handler in PAIRWISE_HANDLER_NAMES and not _pairwise(args):
            raise FromHfError(
                f"--handler-name {handler} writes preference pairs: train them with posttrain_gpt.py "
                "--stage dpo, or use AlpacaStyleInstructionHandler for --stage sft"
            )
        if args.prompt_type is None:
            raise FromHfError(f"--handler-name {handler} needs --prompt-type (the chat template), e.g. qwen3")
        if args.pack and args.seq_length is None:
            raise FromHfError("--pack packs samples into --seq-length tokens: give --seq-length")
        if args.neat_pack and not args.pack:
            raise FromHfError("--neat-pack needs --pack")
        if args.json_keys:
            raise FromHfError(
                f"--json-keys: {handler} reads its columns by name; rename them with --map-keys"
            )
    else:
        if handler is not None and is_instruction_handler(handler):
            raise FromHfError(
                f"--handler-name {handler} writes fine-tuning data: train it with posttrain_gpt.py "
                "--stage sft, or use GeneralPretrainHandler for pretraining"
            )
        given = [
            f
            for f, on in (
                ("--pack", args.pack),
                ("--neat-pack", args.neat_pack),
                ("--map-keys", args.map_keys is not None),
            )
            if on
        ]
        if given:
            raise FromHfError(
                f"{given[0]} applies to instruction data (posttrain_gpt.py --stage sft): drop it"
            )
        if args.json_keys and list(args.json_keys) != list(DEFAULT_KEYS):
            if len(args.json_keys) != 1:
                raise FromHfError(
                    f"--json-keys {' '.join(args.json_keys)}: pretraining reads one dataset per raw "
                    "file; give one key"
                )
            raise FromHfError(
                f"--json-keys {args.json_keys[0]}: the dataset trained on is the text column's; "
                "rename the column to text or preprocess with preprocess_data.py"
            )
    if args.enable_thinking not in (None, "true"):
        raise FromHfError(
            f"--enable-thinking {args.enable_thinking} is not supported: the qwen3 template learns an "
            "empty <think> block in the last answer (--enable-thinking true)"
        )
    for flag, value in (("--workers", args.workers), ("--n-subs", args.n_subs)):
        if value is not None and value < 1:
            raise FromHfError(f"{flag} {value}: must be at least 1")


def check_from_hf_flags(args: argparse.Namespace) -> FromHfPlan:
    """Check this path's flags against the launch; returns its plan (or FromHfError)."""
    return plan_from_args(args)
