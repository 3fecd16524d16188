"""README.md and docs/*.md: every command block that runs convert_ckpt.py, preprocess_data.py, pretrain_gpt.py
or inference.py parses with that script's own parser (paths are not checked), and a block that stands for an
example script (README names the script just before the block) parses to the same flags as the script."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
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


# ---- docs/training.md, "Megatron-LM's own scripts": the overlay and launch commands, run as written.
DROPIN_SECTION = "## Megatron-LM's own scripts"
STANDIN = REPO_ROOT / "tests" / "patches" / "megatron_lm_standin"
# The stand-in clone's pretrain_gpt.py: what it imports, from where (its flags are Megatron-LM's; not parsed).
DROPIN_SCRIPT = (
    "import sys\n"
    "import gpt_builders, model_provider, megatron.core, megatron.training\n"
    "print('CORE', megatron.core.__file__)\n"
    "print('TRAINING', megatron.training.__file__)\n"
    "print('BUILDERS', gpt_builders.__file__)\n"
    "print('PATCHED', bool(mindspeed_llm.registry.patches('megatron-lm')), len(sys.argv) > 20)\n"
)


def _dropin_blocks() -> list[str]:
    text = (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    start = text.index(DROPIN_SECTION)
    end = text.find("\n## ", start + len(DROPIN_SECTION))
    return re.findall(r"```bash\n(.*?)```", text[start:end], re.S)


def _pointed(block: str, **paths: Path) -> str:
    """The block with its ``NAME=...`` lines pointing at ``paths`` (nothing else changed)."""
    for name, path in paths.items():
        block, n = re.subn(rf"^{name}=.*$", f"{name}={shlex.quote(str(path))}", block, flags=re.M)
        assert n == 1, f"docs/training.md: the block has no {name}= line:\n{block}"
    return block


def _standin_clone(root: Path) -> Path:
    """A Megatron-LM-shaped folder: the stand-in training package, and a megatron/core that must not load."""
    shutil.copytree(STANDIN / "megatron", root / "megatron")
    (root / "megatron" / "core").mkdir()
    (root / "megatron" / "core" / "__init__.py").write_text("raise ImportError('the clone megatron/core')\n")
    for name in ("post_training", "rl"):
        (root / "megatron" / name).mkdir()
        (root / "megatron" / name / "__init__.py").write_text("")
    (root / "gpt_builders.py").write_text("")
    (root / "model_provider.py").write_text("")
    (root / "pretrain_gpt.py").write_text(DROPIN_SCRIPT)
    return root


def test_megatron_lm_dropin_commands_run_as_written(tmp_path):
    """The build block makes the overlay; the launch block (torchrun, 2 ranks) runs the edited script on the
    installed megatron-core with the clone's training package; the clone's script edited in place runs
    with PYTHONSAFEPATH=1 and, without it, stops with the one line that names the fix."""
    import importlib.metadata

    blocks = _dropin_blocks()
    assert len(blocks) >= 2 and "torchrun" in blocks[1], blocks
    clone, overlay = _standin_clone(tmp_path / "Megatron-LM"), tmp_path / "overlay"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MINDSPEED_LLM_DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PET_MASTER_PORT": str(_free_port())}
    build = subprocess.run(["bash", "-euc", _pointed(blocks[0], MEGATRON_LM=clone, OVERLAY=overlay)],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert (overlay / "pretrain_gpt.py").read_text().startswith("import mindspeed_llm\n")
    launch = subprocess.run(["bash", "-euc", _pointed(blocks[1], MEGATRON_LM=clone, OVERLAY=overlay)],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-3000:]
    installed = importlib.metadata.distribution("megatron-core").locate_file("megatron/core/__init__.py")
    lines = launch.stdout.splitlines()
    assert lines.count(f"CORE {installed}") == 2, launch.stdout  # both ranks: the wheel's megatron-core
    assert lines.count(f"TRAINING {overlay}/megatron/training/__init__.py") == 2, launch.stdout
    assert lines.count(f"BUILDERS {overlay}/gpt_builders.py") == 2, launch.stdout
    assert lines.count("PATCHED True True") == 2, launch.stdout  # the import hook applied; the docs' flags

    # The clone's own script with the import added, run in place: one line without PYTHONSAFEPATH ...
    in_place = clone / "pretrain_gpt.py"
    in_place.write_text("import mindspeed_llm\n" + DROPIN_SCRIPT)
    plain = {k: v for k, v in env.items() if k != "PYTHONSAFEPATH"}
    shadowed = subprocess.run([sys.executable, str(in_place)], env=plain, capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
    assert shadowed.returncode == 1 and shadowed.stderr.count("\n") == 1, shadowed.stderr
    assert shadowed.stderr.startswith(f"error: megatron.core would come from {clone}/megatron/core, not from")
    assert "PYTHONSAFEPATH=1" in shadowed.stderr
    # ... and the docs' way with PYTHONSAFEPATH=1 and the overlay on PYTHONPATH.
    safe_env = {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": f"{overlay}{os.pathsep}{REPO_ROOT}"}
    safe = subprocess.run([sys.executable, str(in_place), *["--flag"] * 21], env=safe_env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert safe.returncode == 0, safe.stderr[-3000:]
    assert f"CORE {installed}" in safe.stdout and "PATCHED True True" in safe.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
