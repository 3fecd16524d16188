"""README.md and docs/*.md: every command block that runs convert_ckpt.py, preprocess_data.py, pretrain_gpt.py
or inference.py parses with that script's own parser (paths are not checked), and a block that stands for an
example script (README names the script just before the block) parses to the same flags as the script."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from mindspeed_llm.config.flags import add_inference_args
from mindspeed_llm.config.flags import build_parser as pretrain_parser
from mindspeed_llm.convert.cli import build_parser as convert_parser
from mindspeed_llm.data.arguments import build_parser as preprocess_parser
from mindspeed_llm.evaluation.config import add_evaluation_args
from tests.conftest import REPO_ROOT
from tests.examples.test_model_example_scripts import _recorded_argv

PARSERS = {
    "convert_ckpt.py": convert_parser,
    "preprocess_data.py": preprocess_parser,
    "pretrain_gpt.py": pretrain_parser,
    "posttrain_gpt.py": pretrain_parser,  # posttrain: the same flags
    "inference.py": lambda: add_inference_args(pretrain_parser()),
    "evaluation.py": lambda: add_evaluation_args(pretrain_parser()),
}
DOCS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)$")
_SCRIPT_REF = re.compile(r"`(examples/[^`]+\.sh)`")


def _logical_lines(block: str) -> list[str]:
    """The block's shell lines: comments dropped, backslash continuations joined."""
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def _expand(line: str, variables: dict[str, str]) -> str:
    """$VAR / ${VAR} from assignments earlier in the same block."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)


def doc_commands() -> list[tuple[str, str, str, list[str], str | None]]:
    """(doc, block start line, entry script, its arguments, example script named before the block)."""
    found = []
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        previous_end = 0
        for block in _BLOCK.finditer(text):
            prose = text[previous_end:block.start()]
            previous_end = block.end()
            refs = _SCRIPT_REF.findall(prose)
            variables: dict[str, str] = {}
            for line in _logical_lines(block.group(1)):
                if m := _ASSIGN.match(line):
                    variables[m.group(1)] = m.group(2).strip("\"'")
                    continue
                if not any(name in line for name in PARSERS):
                    continue
                # [--optional flags] in prose-like usage lines: parse them too; "..." stands for elided flags.
                tokens = [t for t in shlex.split(_expand(line, variables).replace("[", "").replace("]", ""))
                          if t != "..."]
                for i, token in enumerate(tokens):
                    name = Path(token).name
                    if (
                        name in PARSERS
                        and i > 0
                        and Path(tokens[i - 1]).name in ("python", "python3", "torchrun")
                    ):
                        where = f"{doc}:{text.count(chr(10), 0, block.start()) + 1}"
                        found.append((doc, where, name, tokens[i + 1:], refs[-1] if refs else None))
    return found


COMMANDS = doc_commands()


def _parse(script: str, argv: list[str]) -> argparse.Namespace:
    """The entry script's parser on ``argv``; a parse error fails with argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return PARSERS[script]().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{script} {' '.join(argv)}\n{err.getvalue()}")


def test_the_docs_have_commands_to_check():
    scripts = {c[2] for c in COMMANDS if c[0] == "README.md"}
    assert scripts == {"convert_ckpt.py", "preprocess_data.py"}, COMMANDS
    assert any(c[0].startswith("docs/") and c[2] == "pretrain_gpt.py" for c in COMMANDS)


@pytest.mark.parametrize("doc,where,script,argv,example", COMMANDS, ids=[f"{c[1]}-{c[2]}" for c in COMMANDS])
def test_doc_command_parses(doc, where, script, argv, example):
    _parse(script, argv)


@pytest.mark.parametrize("doc,where,script,argv,example", [c for c in COMMANDS if c[4]],
                         ids=[f"{c[1]}-{c[4]}" for c in COMMANDS if c[4]])
def test_doc_command_matches_the_example_script_it_names(doc, where, script, argv, example, tmp_path):
    recorded = _recorded_argv(example, "python", tmp_path)
    assert Path(recorded[0]).name == script, f"{where}: {example} runs {recorded[0]}, the block runs {script}"
    assert vars(_parse(script, argv)) == vars(_parse(script, recorded[1:])), f"{where} and {example} differ"


def test_line_joining_and_variables():
    block = (
        'D=./data\n# comment\npython pretrain_gpt.py --num-layers 2 \\\n    --data-path "$D/x" ...  # note\n'
    )
    lines = _logical_lines(block)
    assert lines == ["D=./data", 'python pretrain_gpt.py --num-layers 2      --data-path "$D/x" ...']
    assert _expand(lines[1], {"D": "./data"}).endswith('"./data/x" ...')
