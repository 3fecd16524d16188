"""inference.py's command line: generation flags, and one-line refusals (torch-free, no launch)."""

from __future__ import annotations

import pytest

from mindspeed_llm.config.flags import (
    ArgumentError,
    add_inference_args,
    build_parser,
    given_flags,
    parse_args,
    training_only_flags,
)
from mindspeed_llm.config.validate import check_inference_args

MODEL = [
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--max-position-embeddings",
    "256",
    "--swiglu",
    "--disable-bias-linear",
    "--load",
    "/ckpt",
    "--tokenizer-name-or-path",
    "/tok",
]


def _check(*flags: str, world: int = 1):
    return check_inference_args(parse_args([*MODEL, *flags], add_inference_args), world)


def test_generate_launch_fills_what_training_needs() -> None:
    args = _check("--prompt", "hi", "--prompt", "there")
    assert args.task == ["greedy"] and args.prompt == ["hi", "there"]
    assert args.seq_length == 256 and args.use_kv_cache
    assert _check("--prompt", "hi", "--top-k", "5").task == ["do_sample"]
    assert _check("--prompt", "hi", "--task", "greedy", "do_sample", "--top-p", "0.9").task == [
        "greedy",
        "do_sample",
    ]
    assert not _check("--prompt", "hi", "--no-kv-cache").use_kv_cache
    # Weights only: generation reads no optimizer, scheduler or RNG state, whatever the checkpoint holds.
    assert args.no_load_optim and args.no_load_rng


@pytest.mark.parametrize("flags,needle", [
    ([], "nothing to generate"),
    (["--prompt", "x", "--task", "greedy", "--temperature", "0.7"], "--task greedy"),
    (["--prompt", "x", "--temperature", "0"], "--temperature must be > 0"),
    (["--prompt", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--prompt", "x", "--top-k", "-1"], "--top-k must be >= 0"),
    (["--prompt", "x", "--temperature", "nan"], "--temperature must be > 0, got nan"),
    (["--prompt", "x", "--temperature", "-0.5"], "--temperature must be > 0"),
    (["--prompt", "x", "--temperature", "1e-40"], "--temperature 1e-40 is outside [0.0001, 10000]"),
    (["--prompt", "x", "--temperature", "inf"], "--temperature inf is outside [0.0001, 10000]"),
    (["--prompt", "x", "--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
    (["--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "x", "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"],
     "--num-layers-per-virtual-pipeline-stage: generation runs one model chunk per pipeline stage"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--task", "chat"], "--task chat needs --prompt-type"),
    (["--task", "chat", "greedy", "--prompt-type", "qwen"], "chat runs alone"),
    (["--prompt", "x", "--prompt-type", "qwen"], "--prompt-type applies to --task chat"),
    (["--prompt", "x", "--data-path", "d_text_document"], "reads no dataset"),
    (["--prompt", "x", "--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file"),
    (["--prompt", "x", "--sequence-parallel", "--tensor-model-parallel-size", "2"], "--sequence-parallel"),
])
def test_refusals_name_the_flag(flags, needle) -> None:
    parallel = "--tensor-model-parallel-size" in flags or "--pipeline-model-parallel-size" in flags
    with pytest.raises(ArgumentError) as err:
        _check(*flags, world=2 if parallel else 1)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_training_only_flags_are_named() -> None:
    argv = [
        *MODEL,
        "--prompt",
        "x",
        "--micro-batch-size",
        "4",
        "--no-load-optim",
        "--seed",
        "3",
        "--lr",
        "1e-4",
    ]
    parser = add_inference_args(build_parser())
    assert training_only_flags(parser, given_flags(argv, add_inference_args)) == [
        "--lr", "--micro-batch-size", "--no-load-optim"]


def test_sampling_edges_that_are_accepted() -> None:
    """--top-k 0 is no top-k filter (transformers' meaning); the temperature range's ends are accepted."""
    from mindspeed_llm.inference.cli import sampling_params

    args = _check("--prompt", "x", "--top-k", "0", "--temperature", "1e-4")
    assert args.task == ["do_sample"] and sampling_params(args, True).top_k is None
    assert _check("--prompt", "x", "--temperature", "1e4").temperature == 1e4


@pytest.mark.parametrize("content, needle", [
    (b"\n   \n\t\n", "holds no prompt (every line is blank)"),
    (b"", "holds no prompt"),
    (b"caf\xe9 au lait\n", "not UTF-8 text (byte 3: invalid continuation byte)"),
])
def test_prompts_file_must_be_utf8_with_a_prompt(tmp_path, content, needle) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(ArgumentError) as err:
        _check("--prompts-file", str(path))
    assert str(err.value).startswith(f"--prompts-file {path}: {needle}") and "\n" not in str(err.value)
    assert path.read_bytes() == content
    path.write_text("\n  \nHello\n", encoding="utf-8")
    assert _check("--prompts-file", str(path)).prompts_file == str(path)


def test_inference_py_refuses_a_flag_before_torch_with_one_line_and_exit_2(tmp_path) -> None:
    """The real script: a refusal is a tool's (exit 2, as convert_ckpt.py and argparse), one line, no
    traceback, before torch is imported (a fraction of a second)."""
    import os
    import subprocess
    import sys

    from tests.helpers.paths import REPO_ROOT

    cmd = [sys.executable, str(REPO_ROOT / "inference.py"), *MODEL, "--prompt", "hi", "--temperature", "nan"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --temperature"), run.stderr
    assert list(tmp_path.iterdir()) == []
