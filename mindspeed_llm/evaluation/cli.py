"""evaluation.py's body: load one rank's shard as inference.py does, then evaluate from rank 0.

Rank 0 reads the task files and finds the lm-eval tasks first (a bad folder or an unknown task fails every
rank before the model loads), builds
:class:`MegatronLM` over a :class:`ModelServer` and runs the built-in tasks and the lm-eval tasks; the other
ranks serve its forward passes until it is done.
"""

from __future__ import annotations

import logging
import warnings

import torch

from mindspeed_llm.evaluation.config import EvaluationConfig, add_evaluation_args

logger = logging.getLogger("mindspeed_llm.evaluation")


def _chat_wrapper(args, hf_tokenizer):
    """--prompt-type: each prompt as one user turn of the template, up to the assistant's header."""
    from mindspeed_llm.data.chat_templates import USER, build_template, template_specials
    from mindspeed_llm.inference.cli import generation_prompt

    template = build_template(args.prompt_type, hf_tokenizer, args.tokenizer_name_or_path)
    specials = template_specials(hf_tokenizer)
    return lambda prompt: generation_prompt(template, specials, [(USER, prompt)])


def main() -> None:
    """evaluation.py's body (after the device patches)."""
    import mindspeed_llm
    from mindspeed_llm.config.validate import check_evaluation_args
    from mindspeed_llm.evaluation.harness import run_lm_eval, task_manager
    from mindspeed_llm.evaluation.lm import DEFAULT_MAX_GEN_TOKS, MegatronLM
    from mindspeed_llm.evaluation.runner import read_questions, run_builtin
    from mindspeed_llm.evaluation.server import ModelServer
    from mindspeed_llm.inference.cli import DEPRECATED_COLLECTIVES, load_model, stop_ids_for
    from mindspeed_llm.inference.generation import Generator
    from mindspeed_llm.patches.inference import enable_inference_patches
    from mindspeed_llm.runtime.errors import fail_together
    from mindspeed_llm.runtime.initialize import initialize_megatron
    from mindspeed_llm.runtime.tokenizer import build_tokenizer

    warnings.filterwarnings("ignore", message=DEPRECATED_COLLECTIVES)
    args = initialize_megatron(extra_args_provider=add_evaluation_args, check=check_evaluation_args)
    enable_inference_patches(mindspeed_llm.registry, mindspeed_llm.DEVICE)
    config = EvaluationConfig.from_args(args)
    tokenizer = build_tokenizer(args)
    hf = tokenizer.hf_tokenizer
    rank0 = torch.distributed.get_rank() == 0
    with fail_together():  # a bad task folder stops every rank before the model loads
        wrap = _chat_wrapper(args, hf) if config.prompt_type else None
        questions = read_questions(config, wrap) if rank0 else {}
        manager = task_manager(config) if rank0 and config.lm_eval_tasks else None
    model, model_config = load_model(args, tokenizer)
    generator = Generator(
        model, vocab_size=model_config.vocab_size, pad_id=tokenizer.eod, use_kv_cache=config.use_kv_cache
    )
    server = ModelServer(generator, pad_id=tokenizer.eod)
    if not rank0:
        server.serve()
        return _finish()
    lm = MegatronLM(
        server,
        hf,
        max_length=model_config.max_position_embeddings,
        batch_size=config.batch_size,
        stop_ids=stop_ids_for(args.tokenizer_name_or_path, hf),
        max_gen_toks=config.max_new_tokens or DEFAULT_MAX_GEN_TOKS,
    )
    try:
        if questions:
            run_builtin(lm, questions, config)
        if config.lm_eval_tasks:
            run_lm_eval(lm, config, manager)
        lm.report_truncation()
    except BaseException:
        server.stop(failed=True)
        raise
    server.stop()
    _finish()


def _finish() -> None:
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
