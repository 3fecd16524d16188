"""inference.py launches and their printed answers, and transformers' greedy reference (inference tests)."""

from __future__ import annotations

import re

import torch

from tests.helpers.launch import torchrun
from tests.helpers.paths import REPO_ROOT

INFERENCE = REPO_ROOT / "inference.py"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_BLOCK = re.compile(r"You:\n(.*?)\n\nMindSpeed-LLM:\n(.*?)\n", re.S)


def parse_outputs(stdout: str) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs that inference.py printed."""
    return _BLOCK.findall(stdout)


def run_inference(flags: list, *, nproc: int = 1, timeout: int = 240) -> list[tuple[str, str]]:
    """inference.py under torchrun; the printed (prompt, continuation) pairs."""
    return parse_outputs(torchrun(INFERENCE, *flags, nproc=nproc, timeout=timeout).stdout)


def run_tasks(flags: list, tasks: list[str], *, nproc: int = 1, timeout: int = 240) -> dict[str, list[tuple[str, str]]]:
    """inference.py --task T1 T2 ... in one launch; each task's (prompt, continuation) pairs."""
    stdout = torchrun(INFERENCE, *flags, "--task", *tasks, nproc=nproc, timeout=timeout).stdout
    if len(tasks) == 1:  # one task: no headers
        return {tasks[0]: parse_outputs(stdout)}
    found = {}
    for task in tasks:
        header = f"=============== {task} ===============\n"
        assert header in stdout, stdout
        found[task] = parse_outputs(stdout.split(header, 1)[1].split("===============", 1)[0])
    return found


def hf_continuation(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """transformers' greedy ``generate`` (the reference): the new ids, the stop token included."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos)
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(eos) + 1] if eos in new else new
