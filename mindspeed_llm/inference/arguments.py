"""inference.py's command line: the training flags that describe the model, plus the generation flags.

Torch-free, like ``training/arguments.py``: ``--help`` and a bad launch answer before the heavy imports.
The flag names follow MindSpeed-LLM's ``inference.py`` (``--task``, ``--max-new-tokens``,
``--temperature``, ``--top-k``, ``--top-p``, ``--use-kv-cache``, ``--history-turns``); ``--prompt-type``
(the chat template of ``--task chat``) is the training parser's, the one the SFT data was made with.
"""

from __future__ import annotations

import argparse
import os

from mindspeed_llm.data.chat_templates import PROMPT_TYPES
from mindspeed_llm.training.arguments import ArgumentError, check_args

TASKS = ("greedy", "do_sample", "chat")

# Parser groups of the training command line whose flags shape no part of generation: a training
# script's flag block is accepted as it is (MindSpeed-LLM's generate scripts carry such flags) and
# inference.py names the ones given in one NOTE line.
_TRAINING_ONLY_GROUPS = ("optimizer and schedule", "training", "recompute", "logging and evaluation")
_TRAINING_ONLY_FLAGS = ("save", "save_interval", "no_load_optim", "no_load_rng", "no_save_optim", "no_save_rng",
                        "finetune", "exit_on_missing_checkpoint", "micro_batch_size", "global_batch_size",
                        "accumulate_allreduce_grads_in_fp32", "loss_scale", "initial_loss_scale",
                        "min_loss_scale", "loss_scale_window", "hysteresis", "data_cache_path", "split",
                        "num_workers", "no_mmap_bin_files", "reset_position_ids", "eod_mask_loss", "stage",
                        "is_instruction_dataset", "no_pad_to_seq_lengths", "variable_seq_lengths",
                        "pad_to_multiple_of",
                        "use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather")
_DATA_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path", "mock_data")


def add_inference_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The generation flags (an ``extra_args_provider`` for the training parser)."""
    parser.prog = "inference.py"
    parser.description = "Generate text from a Megatron checkpoint (any TP/PP) with megatron-core's KV cache."
    g = parser.add_argument_group("inference")
    g.add_argument("--task", choices=TASKS, nargs="+", default=None,
                   help="greedy / do_sample: continue each prompt (both: one after the other, as MindSpeed-LLM); "
                        "chat: a conversation through --prompt-type's template. Default: do_sample when "
                        "--temperature/--top-k/--top-p is given, else greedy")
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


def _check_tasks(args: argparse.Namespace) -> None:
    """--task: default from the sampling flags; chat alone; sampling flags only where something samples."""
    if args.task is None:
        args.task = ["do_sample" if sampling_flags_given(args) else "greedy"]
    args.task = list(dict.fromkeys(args.task))  # each once, in the order given
    if "chat" in args.task and len(args.task) > 1:
        raise ArgumentError(f"--task {' '.join(args.task)}: chat runs alone (it samples when --temperature/--top-k/"
                            "--top-p is given, else it is greedy)")
    if args.task == ["greedy"] and sampling_flags_given(args):
        raise ArgumentError("--temperature/--top-k/--top-p mean nothing with --task greedy: add --task do_sample "
                            "(or drop --task), or drop them")
    if args.temperature is not None and args.temperature <= 0:
        raise ArgumentError(f"--temperature must be > 0, got {args.temperature} (greedy decoding is --task greedy)")


def check_inference_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """The training rules for the model and parallel flags, and the generation flags' own rules."""
    given_data = [f"--{name.replace('_', '-')}" for name in _DATA_FLAGS[:-1] if getattr(args, name)]
    if given_data:
        raise ArgumentError(f"{' '.join(given_data)}: inference.py reads no dataset; drop the flag "
                            "(prompts come from --prompt or --prompts-file)")
    # Training-only settings that check_args needs; generation never reads them.
    if args.lr is None:
        args.lr = 0.0
    if args.train_iters is None and args.train_samples is None:
        args.train_iters = 1
    args.mock_data = True
    if args.seq_length is None and args.max_position_embeddings is not None:
        args.seq_length = args.max_position_embeddings
    if not args.load:
        raise ArgumentError("--load is required: the Megatron checkpoint folder (convert_ckpt.py --save-dir, or "
                            "a training --save)")
    # --prompt-type is the training parser's (the SFT data's template); training refuses it without instruction
    # data, generation uses it for --task chat: checked here instead.
    prompt_type, args.prompt_type = args.prompt_type, None
    check_args(args, world_size)
    args.prompt_type = prompt_type
    if args.virtual_pipeline_model_parallel_size:
        raise ArgumentError("--num-layers-per-virtual-pipeline-stage: generation runs one model chunk per "
                            "pipeline stage; reshard the checkpoint without virtual stages (convert_ckpt.py mg->mg)")
    if args.sequence_parallel:
        raise ArgumentError("--sequence-parallel is not supported for generation (megatron-core's static "
                            "inference context refuses it): drop the flag")
    if args.max_new_tokens < 1:
        raise ArgumentError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.max_batch_size < 1:
        raise ArgumentError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    _check_tasks(args)
    if args.top_k is not None and args.top_k < 1:
        raise ArgumentError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ArgumentError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.history_turns < 0:
        raise ArgumentError(f"--history-turns must be >= 0, got {args.history_turns}")
    if args.tokenizer_type == "NullTokenizer":
        raise ArgumentError("--tokenizer-type NullTokenizer cannot turn text into tokens: give "
                            "--tokenizer-type PretrainedFromHF --tokenizer-name-or-path HF_MODEL_FOLDER")
    if args.task == ["chat"]:
        if args.prompt_type is None:
            raise ArgumentError(f"--task chat needs --prompt-type (the template the model was fine-tuned with: "
                                f"{', '.join(PROMPT_TYPES)})")
        if args.prompts_file:
            raise ArgumentError("--task chat takes the user turns from --prompt (or stdin), not --prompts-file")
    elif args.prompt_type is not None:
        raise ArgumentError("--prompt-type applies to --task chat: add --task chat, or drop --prompt-type")
    if args.task != ["chat"] and not (args.prompt or args.prompts_file):
        raise ArgumentError("nothing to generate: give --prompt TEXT (repeatable) or --prompts-file PATH, "
                            "or --task chat --prompt-type TYPE for a conversation")
    if args.prompts_file and not os.path.isfile(args.prompts_file):
        raise ArgumentError(f"--prompts-file {args.prompts_file}: no such file (one prompt per line)")
    return args


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
