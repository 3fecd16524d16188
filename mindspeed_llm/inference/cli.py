"""inference.py: load one rank's shard of a Megatron checkpoint, generate, print on rank 0.

The launch is the training launch (same model flags, same TP/PP, ``--load``); each process builds its
own ``GPTModel`` chunk and loads only its own file (legacy) or shard (torch_dist, any TP/PP).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable

import torch

from mindspeed_llm.config.flags import (
    ArgumentError,
    add_inference_args,
    build_parser,
    sampling_flags_given,
    training_only_flags,
)
from mindspeed_llm.config.groups import RunConfig, transformer_config
from mindspeed_llm.config.plan import RunPlan
from mindspeed_llm.config.validate import check_inference_args
from mindspeed_llm.console import write_line
from mindspeed_llm.data.chat_templates import ASSISTANT, USER, build_template, template_specials
from mindspeed_llm.data.errors import PreprocessError
from mindspeed_llm.inference.generation import Generator, SamplingParams

logger = logging.getLogger("mindspeed_llm.inference")

_SENTINEL = "MINDSPEED_LLM_ANSWER"
# megatron's TP logits gather and the MoE dispatchers' gather / reduce-scatter call torch's deprecated
# spellings on every step: one warning each would be noise.
DEPRECATED_COLLECTIVES = r".*(all_gather_into_tensor|reduce_scatter_tensor).* is deprecated"


def model_provider(args: argparse.Namespace, config: RunConfig, plan: RunPlan, pre_process: bool,
                   post_process: bool):
    """This rank's GPTModel chunk, in eval mode (the training entry's model, logits gathered over TP)."""
    from mindspeed_llm.models.builder import build_gpt_model

    model = build_gpt_model(
        plan.model_config,
        padded_vocab_size=plan.padded_vocab_size,
        pre_process=pre_process,
        post_process=post_process,
        transformer_config=transformer_config(config, plan),
        max_sequence_length=config.model.max_position_embeddings,
    )
    from mindspeed_llm.lora import LoraConfig, apply_lora

    lora = LoraConfig.from_args(args)  # --lora-*: the adapter --lora-load (or --load) holds is applied
    if lora is not None:
        apply_lora(model, lora)
    return model.eval()


def load_model(args: argparse.Namespace, tokenizer):
    """Check the launch against ``--load``, build this rank's chunk and load its weights (nothing else).

    ``args``: the namespace of the flags; the model setup settles the run's plan (``runtime.model.plan_run``).
    Weights only: validation set ``--no-load-optim`` and ``--no-load-rng``.
    """
    from megatron.core import parallel_state as ps

    from mindspeed_llm.runtime import checkpoint, run
    from mindspeed_llm.runtime.errors import fail_together
    from mindspeed_llm.runtime.model import plan_run

    config = run.get_config()
    iteration = checkpoint.find_checkpoint(args)
    with fail_together():
        plan = plan_run(args, config, tokenizer, iteration)
    args = run.get_args()
    model = model_provider(args, config, plan, ps.is_pipeline_first_stage(ignore_virtual=True),
                           ps.is_pipeline_last_stage(ignore_virtual=True))
    checkpoint.load([model], None, None, args, iteration)
    return model, plan.model_config


def stop_ids_for(tokenizer_path: str, hf_tokenizer, extra_texts: tuple[str, ...] = ()) -> set[int]:
    """EOS, the ids generation_config.json names as EOS (as transformers' generate stops), and
    ``extra_texts``."""
    ids = {int(hf_tokenizer.eos_token_id)} if hf_tokenizer.eos_token_id is not None else set()
    gen_config = os.path.join(tokenizer_path, "generation_config.json")
    if os.path.isfile(gen_config):
        with open(gen_config, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for text in extra_texts:
        encoded = hf_tokenizer(text, add_special_tokens=False).input_ids
        if len(encoded) == 1:  # an end-of-turn marker the tokenizer knows as one token
            ids.add(int(encoded[0]))
    return ids


def template_stop_text(template, specials: dict[str, str]) -> str:
    """What closes an assistant turn in ``template`` (``<|im_end|>``, ``<|eot_id|>``, EOS), stripped."""
    text, spans = template.render("", [(USER, "q"), (ASSISTANT, _SENTINEL)], specials)
    answer = text[spans[-1][0]: spans[-1][1]]
    return answer.rsplit(_SENTINEL, 1)[-1].strip()


def generation_prompt(template, specials: dict[str, str], turns: list[tuple[str, str]]) -> str:
    """The conversation rendered by ``template`` up to the header that prompts the next answer."""
    text, spans = template.render("", [*turns, (ASSISTANT, _SENTINEL)], specials)
    return text[: spans[-1][0]]


class TextStream:
    """Prints one sequence's text as its tokens arrive (decoding the whole answer keeps multi-byte
    characters whole)."""

    def __init__(self, hf_tokenizer, stop_ids: set[int]) -> None:
        self.hf_tokenizer, self.stop_ids = hf_tokenizer, stop_ids
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, row: int, token: int) -> None:
        if token in self.stop_ids:
            return
        self.ids.append(token)
        text = self.hf_tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next token
            return
        sys.stdout.write(text[len(self.printed):])
        sys.stdout.flush()
        self.printed = text


def answer_text(hf_tokenizer, tokens: list[int], stop_ids: set[int]) -> str:
    """The text of generated ``tokens`` without the stop token."""
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return hf_tokenizer.decode(tokens, skip_special_tokens=True)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt texts, then --prompts-file lines (empty lines skipped)."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    return prompts


def run_generate(args, generator: Generator, hf_tokenizer, sampling: SamplingParams, stop_ids: set[int],
                 max_length: int, rank0: bool) -> None:
    """Each prompt's continuation, in batches of --max-batch-size; one prompt streams."""
    prompts = read_prompts(args)
    for first in range(0, len(prompts), args.max_batch_size):
        batch = prompts[first: first + args.max_batch_size]
        ids = [hf_tokenizer(p).input_ids for p in batch]
        stream = TextStream(hf_tokenizer, stop_ids) if len(prompts) == 1 and rank0 else None
        if stream is not None:
            sys.stdout.write(f"You:\n{batch[0]}\n\nMindSpeed-LLM:\n")
        out = _generate(generator, ids, args, sampling, stop_ids, max_length, stream)
        if stream is not None:
            write_line("\n")
        elif rank0:
            for prompt, tokens in zip(batch, out):
                write_line(
                    f"You:\n{prompt}\n\nMindSpeed-LLM:\n{answer_text(hf_tokenizer, tokens, stop_ids)}\n"
                )
                write_line("")


def _generate(
    generator: Generator, ids, args, sampling, stop_ids, max_length, on_token=None
) -> list[list[int]]:
    try:
        return generator.generate(
            ids,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            stop_ids=stop_ids,
            max_length=max_length,
            on_token=on_token,
        )
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def user_turns(args: argparse.Namespace, rank0: bool) -> Callable[[], str | None]:
    """The next user text: --prompt's in order (scripted), else a line of stdin read on rank 0
    (interactive)."""
    scripted = list(args.prompt or [])
    if scripted:
        return lambda: scripted.pop(0) if scripted else None

    def from_stdin() -> str | None:
        text = None
        if rank0:
            sys.stdout.write("You: ")
            sys.stdout.flush()
            line = sys.stdin.readline()
            text = line.rstrip("\n") if line and line.strip() not in ("exit", "quit") else None
            if text is None:
                write_line("")  # end the prompt's line
        shared = [text]
        torch.distributed.broadcast_object_list(shared, src=0)  # every rank runs the same steps
        return shared[0]

    return from_stdin


def chat_template_for(args: argparse.Namespace, hf_tokenizer):
    """--prompt-type's template, its special tokens and the ids that end an answer; a tokenizer without a
    template or a template that raises is one :class:`ArgumentError` line naming the template."""
    with _template_errors(args):
        template = build_template(args.prompt_type, hf_tokenizer, args.tokenizer_name_or_path)
        specials = template_specials(hf_tokenizer)
        end_of_turn = template_stop_text(template, specials)
        stops = stop_ids_for(args.tokenizer_name_or_path, hf_tokenizer, (end_of_turn,))
    return template, specials, stops


@contextlib.contextmanager
def _template_errors(args: argparse.Namespace, turn: int | None = None):
    where = f" at user turn {turn}" if turn is not None else ""
    try:
        yield
    except PreprocessError as exc:
        raise ArgumentError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - jinja2's errors from the tokenizer's own template
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArgumentError(
            f"--prompt-type {args.prompt_type}: the chat template of {args.tokenizer_name_or_path} fails"
            f"{where} ({type(exc).__name__}: {reason}); choose another --prompt-type"
        ) from None


def run_chat(
    args, generator: Generator, tokenizer, sampling: SamplingParams, max_length: int, rank0: bool
) -> None:
    """A conversation through --prompt-type's template; each answer stops at the template's end of turn."""
    hf = tokenizer.hf_tokenizer
    template, specials, stop_ids = chat_template_for(args, hf)
    history: list[tuple[str, str]] = []
    next_turn = user_turns(args, rank0)
    while (text := next_turn()) is not None:
        kept = history[len(history) - 2 * args.history_turns:] if args.history_turns else []
        turns = [*kept, (USER, text)]
        with _template_errors(args, len(history) // 2 + 1):
            prompt = generation_prompt(template, specials, turns)
        ids = hf(prompt, add_special_tokens=False).input_ids
        stream = TextStream(hf, stop_ids) if rank0 else None
        if rank0:
            sys.stdout.write(f"You:\n{text}\n\nMindSpeed-LLM:\n" if args.prompt else "MindSpeed-LLM: ")
        out = _generate(generator, [ids], args, sampling, stop_ids, max_length, stream)[0]
        if rank0:
            write_line("\n")
        history += [(USER, text), (ASSISTANT, answer_text(hf, out, stop_ids))]


def main() -> None:
    """inference.py's body (after the device patches)."""
    import mindspeed_llm
    from mindspeed_llm.patches.inference import enable_inference_patches
    from mindspeed_llm.runtime import run
    from mindspeed_llm.runtime.initialize import initialize_megatron
    from mindspeed_llm.runtime.tokenizer import build_tokenizer

    warnings.filterwarnings("ignore", message=DEPRECATED_COLLECTIVES)
    args = initialize_megatron(extra_args_provider=add_inference_args, check=check_inference_args)
    enable_inference_patches(mindspeed_llm.registry, mindspeed_llm.DEVICE)
    ignored = training_only_flags(add_inference_args(build_parser()), run.launch_flags())
    if ignored:
        logger.info("NOTE: training-only flags, ignored by inference.py: %s", " ".join(ignored))
    tokenizer = build_tokenizer(args)
    if args.task == ["chat"]:
        chat_template_for(args, tokenizer.hf_tokenizer)  # a template that cannot work: before the model loads
    model, model_config = load_model(args, tokenizer)
    args = run.get_args()  # configuration and plan
    generator = Generator(model, vocab_size=model_config.vocab_size, pad_id=tokenizer.eod,
                          use_kv_cache=args.use_kv_cache)
    rank0 = torch.distributed.get_rank() == 0
    max_length = model_config.max_position_embeddings
    if args.task == ["chat"]:
        run_chat(
            args, generator, tokenizer, sampling_params(args, sampling_flags_given(args)), max_length, rank0
        )
        return _finish()
    stop_ids = stop_ids_for(args.tokenizer_name_or_path, tokenizer.hf_tokenizer)
    for task in args.task:
        if len(args.task) > 1 and rank0:
            write_line(f"=============== {task} ===============")
        run_generate(
            args,
            generator,
            tokenizer.hf_tokenizer,
            sampling_params(args, task == "do_sample"),
            stop_ids,
            max_length,
            rank0,
        )
    _finish()


def sampling_params(args: argparse.Namespace, sample: bool) -> SamplingParams:
    """Greedy, or sampling with the launch's --temperature/--top-k/--top-p (unset: 1.0, all tokens; --top-k 0:
    all tokens) and --seed."""
    return SamplingParams(greedy=not sample, temperature=args.temperature or 1.0, top_k=args.top_k or None,
                          top_p=args.top_p, seed=args.seed)


def _finish() -> None:
    """Every rank leaves together."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
