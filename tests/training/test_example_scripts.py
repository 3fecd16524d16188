"""The pretrain example scripts: every flag they pass parses and validates; logs/ is created."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mindspeed_llm.config.flags import parse_args
from mindspeed_llm.config.groups import RunConfig
from mindspeed_llm.config.plan import parallel_layout
from mindspeed_llm.config.validate import validate_args
from tests.conftest import REPO_ROOT, free_port

SCRIPTS = [
    "examples/mcore/qwen25/pretrain_qwen25_7b_32k_ptd.sh",
    "examples/mcore/qwen25/pretrain_qwen25_0point5b_32k_ptd.sh",
    "examples/mcore/llama3/pretrain_llama3_8b_ptd.sh",
    "examples/mcore/llama2/pretrain_llama2_7b_ptd.sh",
    *[
        f"examples/mcore/qwen3/pretrain_qwen3_{size}_4K_ptd.sh"
        for size in ("0point6b", "1point7b", "4b", "8b", "14b", "32b")
    ],
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_flags_parse_and_validate(script, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (fake / "torchrun").chmod(0o755)
    logs = tmp_path / "logs" / "nested"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args.txt"),
           "LOG_DIR": str(logs), "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(["bash", str(REPO_ROOT / script)], check=True, env=env, cwd=REPO_ROOT, capture_output=True,
                   timeout=120)
    assert logs.is_dir()
    argv = (tmp_path / "args.txt").read_text().split("\n")
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(argv[argv.index("--nnodes") + 1])
    argv = [a for a in argv[argv.index("pretrain_gpt.py") + 1:] if a]
    args = validate_args(parse_args(argv), world_size=world)
    dp = parallel_layout(RunConfig.from_args(args), world).data_parallel_size
    assert args.bf16 and dp * args.tensor_model_parallel_size * args.pipeline_model_parallel_size * \
        args.context_parallel_size == world


def test_busy_port_stops_the_script_with_the_holder_named(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "MASTER_PORT": str(port), "LOG_DIR": str(tmp_path / "logs"),
               "PYTHONPATH": str(REPO_ROOT), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        proc = subprocess.run(
            ["bash", str(REPO_ROOT / SCRIPTS[0])],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    assert f"MASTER_PORT {port} is already in use" in proc.stderr
    assert not Path(tmp_path / "logs").exists()
