"""Nothing lost: real training processes meet NaN, full disks, unwritable folders, a second run on one --save,
damaged checkpoints and data, schedule changes and signals. Each run must end with the documented exit code,
one ``error:`` line naming the culprit, no traceback, and the last complete checkpoint loadable with no
temporary files beside it.

One process without torchrun (a world of one) for most cases, forked from a preloaded interpreter
(tests.helpers.launch; the file-size limit through tests/e2e/scripts/with_file_size_limit.py). The SIGTERM
tests signal the two workers torchrun would start (forked, as a scheduler signals every task); Ctrl-C goes to
a real torchrun agent, which forwards it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.record import RECORD_KEY
from tests.e2e.pretrain_helpers import (
    PAUSED_IN_SAVE,
    PRETRAIN,
    WITH_FILE_SIZE_LIMIT,
    make_indexed_dataset,
    train_flags,
)
from tests.helpers.launch import (
    Started,
    StartedTorchrun,
    exit_statuses,
    launch_pids,
    signal_launch,
    torchrun_command,
    wait_for_output,
)
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

MODEL = [
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--ffn-hidden-size",
    "128",
    "--num-attention-heads",
    "4",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--max-position-embeddings",
    "64",
    "--swiglu",
    "--disable-bias-linear",
    "--normalization",
    "RMSNorm",
    "--attention-dropout",
    "0",
    "--hidden-dropout",
    "0",
    "--make-vocab-size-divisible-by",
    "1",
]
# What torchrun's workers get (tests.helpers.launch): the one-process runs, started as ``python -u``, are
# forked from the same preloaded interpreter as the torchrun launches.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
_LR_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? learning rate: ([0-9.E+-]+) \|")


def _flags(data: str, iters: int = 4) -> list[str]:
    return MODEL + train_flags(data, iters=iters, seq=16)


def _start(*flags: str) -> Started:
    """pretrain_gpt.py as one process (no torchrun), started now: independent runs overlap on the two
    cores."""
    return Started([sys.executable, "-u", str(PRETRAIN), *flags], env=ENV, timeout=240)


def _run(*flags: str) -> subprocess.CompletedProcess:
    """pretrain_gpt.py as one process (no torchrun, forked as :func:`_start`): its exit code, stdout and
    stderr."""
    return _start(*flags).result()


def _one_error_line(output: str, *words: str) -> str:
    """The single ``error:`` line of ``output`` (which holds no traceback), checked to contain ``words``."""
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _assert_last_complete(save: Path, iteration: int) -> None:
    """The tracker names ``iteration``, its file loads with finite weights, and no temporary file is left."""
    assert not [p for p in save.rglob("*") if p.name.endswith(".tmp")], sorted(save.rglob("*"))
    assert layout.read_tracker(save) == iteration
    state = layout.safe_torch_load(layout.checkpoint_file_for(save, iteration, 0, 0, 1))
    assert state["iteration"] == iteration
    assert all(torch.isfinite(t).all() for t in state["model"].values()
               if torch.is_tensor(t) and t.is_floating_point())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Data and a 4-iteration run saved at iterations 2 and 4 (copied by each test that changes it)."""
    root = tmp_path_factory.mktemp("resilience")
    data = make_indexed_dataset(root / "data" / "corpus_text_document", docs=120)
    save = root / "ckpt"
    proc = _run(*_flags(data), "--save", str(save), "--save-interval", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _assert_last_complete(save, 4)
    return {"root": root, "data": data, "ckpt": save}


def _copy(base, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(base["ckpt"], target)
    return target


# ---- NaN / Inf ---------------------------------------------------------------------------------------------
def test_nan_loss_stops_before_the_step_and_saves_nothing(base, tmp_path):
    """lr 1e30 blows the weights up after iteration 5; iteration 6's check stops every rank, nothing saved."""
    save = _copy(base, tmp_path)
    proc = _run(*_flags(base["data"], iters=8), "--load", str(save), "--save", str(save), "--lr", "1e30",
                "--override-opt_param-scheduler")
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "iteration 6: ", "rank 0", f"kept: iteration 4 in {save}",
                           "--no-check-for-nan-in-loss-and-grad")
    assert "NaN" in line or "Inf" in line
    _assert_last_complete(save, 4)
    assert not (save / "iter_0000006").exists()


def test_nan_weight_in_a_checkpoint_is_refused_on_load_and_never_saved(base, tmp_path):
    save = _copy(base, tmp_path)
    path = Path(layout.checkpoint_file_for(save, 4, 0, 0, 1))
    state = torch.load(path, weights_only=False)
    state["model"]["decoder.final_layernorm.weight"][3] = float("nan")
    torch.save(state, path)
    flags = [
        *_flags(base["data"], iters=6),
        "--load",
        str(save),
        "--save",
        str(save),
        "--override-opt_param-scheduler",
    ]
    proc = _run(*flags)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, str(path), "NaN/Inf in decoder.final_layernorm.weight")
    # With the check off it trains on NaN, but the save is refused: the tracker still names iteration 4.
    proc = _run(*flags, "--no-check-for-nan-in-loss-and-grad")
    assert proc.returncode == 1
    _one_error_line(proc.stderr, f"refusing to save iteration 6 into {save}", "holds NaN/Inf",
                    f"kept: iteration 4 in {save}")
    assert layout.read_tracker(save) == 4 and not (save / "iter_0000006").exists()
    assert not list(save.rglob("*.tmp"))


# ---- disks and folders -------------------------------------------------------------------------------------
def test_full_disk_during_a_save_removes_the_temporary_and_keeps_the_last_checkpoint(base, tmp_path):
    save = _copy(base, tmp_path)
    size = os.path.getsize(layout.checkpoint_file_for(save, 4, 0, 0, 1))
    # a file-size limit (tests/e2e/scripts/with_file_size_limit.py): a write past it fails with EFBIG
    proc = Started([sys.executable, "-u", str(WITH_FILE_SIZE_LIMIT), str(size // 3), str(PRETRAIN),
                    *_flags(base["data"], iters=6), "--load", str(save), "--save", str(save),
                    "--override-opt_param-scheduler"], env=ENV, timeout=240).result()
    assert proc.returncode == 1
    assert "iteration        6/" in proc.stdout  # the failure is the save, after training
    _one_error_line(proc.stderr, f"could not write {save}/iter_0000006/mp_rank_00/model_optim_rng.pt.tmp",
                    "file-size limit", f"iteration 4 in {save}")
    _assert_last_complete(save, 4)
    assert not (save / "iter_0000006").exists()
    # The same command without the limit resumes from 4 and saves 6.
    proc = _run(*_flags(base["data"], iters=6), "--load", str(save), "--save", str(save),
                "--override-opt_param-scheduler")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training ... iterations 5 to 6" in proc.stdout
    _assert_last_complete(save, 6)


def test_unwritable_save_is_refused_before_training(base, tmp_path):
    if os.geteuid() == 0:
        target = "/sys/fs/mindspeed_llm_no_such_ckpt"  # sysfs refuses new folders even to root
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        target = str(tmp_path / "ro" / "ckpt")
    proc = _run(*_flags(base["data"]), "--save", target)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, f"--save {target} is not writable")
    assert "iteration " not in proc.stdout


# ---- two runs, one folder; Ctrl-C --------------------------------------------------------------------------
def test_second_run_on_a_locked_save_is_refused_and_ctrl_c_leaves_no_debris(base, tmp_path):
    save = _copy(base, tmp_path)
    flags = [
        *_flags(base["data"], iters=100000),
        "--load",
        str(save),
        "--save",
        str(save),
        "--save-interval",
        "1",
        "--override-opt_param-scheduler",
    ]
    first = _start(*flags)
    try:
        wait_for_output(first, "successfully saved checkpoint from iteration       6")
        second = _run(*flags)
        assert second.returncode == 1
        _one_error_line(second.stderr, f"--save {save} is in use by another training run",
                        f"PID {launch_pids(first)[0]}")
        signal_launch(first, signal.SIGINT)  # what Ctrl-C sends
    finally:
        exit_statuses(first)  # (killed after 120 s)
    proc = first.result()
    assert proc.returncode == 130
    _one_error_line(proc.stderr, "interrupted by SIGINT (Ctrl-C) during iteration", "no temporary files left")
    last = layout.read_tracker(save)
    assert last >= 6
    _assert_last_complete(save, last)


# ---- damaged checkpoints -----------------------------------------------------------------------------------
def _damage(save: Path, how: str, other: Path) -> Path:
    rank_file = Path(layout.checkpoint_file_for(save, 4, 0, 0, 1))
    if how == "truncated":
        data = rank_file.read_bytes()
        rank_file.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        rank_file.write_bytes(b"")
    elif how == "tracker":
        (save / layout.TRACKER_FILENAME).write_bytes(np.random.default_rng(0).bytes(64))
        return save / layout.TRACKER_FILENAME
    elif how == "other-model":
        # Another model's weights under this run's header (a copy from the wrong folder with its args and
        # record patched).
        theirs = torch.load(layout.checkpoint_file_for(other, 2, 0, 0, 1), weights_only=False)
        ours = torch.load(rank_file, weights_only=False)
        theirs["args"], theirs[RECORD_KEY] = ours["args"], ours[RECORD_KEY]
        torch.save(theirs, rank_file)
    return rank_file


@pytest.fixture(scope="module")
def other_model(base):
    save = base["root"] / "other"
    proc = _run(
        *_flags(base["data"], iters=2), "--hidden-size", "32", "--ffn-hidden-size", "64", "--save", str(save)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return save


DAMAGES = ("truncated", "empty", "tracker", "other-model")


@pytest.fixture(scope="module")
def damaged_runs(base, other_model, tmp_path_factory) -> dict:
    """{how: (save folder, culprit, the finished run)}: one damaged copy each, the four runs started
    together."""
    started = {}
    for how in DAMAGES:
        save = _copy(base, tmp_path_factory.mktemp(f"damaged_{how}"))
        culprit = _damage(save, how, other_model)
        started[how] = (save, culprit, _start(*_flags(base["data"], iters=6), "--load", str(save), "--save",
                                              str(save), "--override-opt_param-scheduler"))
    return {how: (save, culprit, run.result()) for how, (save, culprit, run) in started.items()}


@pytest.mark.parametrize("how, words", [
    ("truncated", ["is damaged or not a torch checkpoint"]),
    ("empty", ["is empty (0 bytes)"]),
    ("tracker", ["holds binary data, expected an iteration number"]),
    ("other-model", ["does not fit this model: size mismatch for", "checkpoint [128, 32], model [128, 64]"]),
])
def test_damaged_checkpoint_is_one_line_naming_the_file(damaged_runs, how, words):
    save, culprit, proc = damaged_runs[how]
    assert proc.returncode == 1
    _one_error_line(proc.stderr, str(culprit), *words)
    assert "iteration " not in proc.stdout.replace("at iteration", "")
    assert not (save / "iter_0000006").exists()


# ---- longer, shorter: the LR schedule ----------------------------------------------------------------------
def _cosine_lr(samples: int, warmup: int, decay: int, max_lr: float = 3e-3, min_lr: float = 3e-4) -> float:
    """megatron's cosine decay, written out from its documented formula."""
    ratio = (samples - warmup) / (decay - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (math.cos(math.pi * ratio) + 1.0)


def _lrs(stdout: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in _LR_LINE.finditer(stdout)}


def test_extending_a_run_needs_one_of_the_scheduler_flags_and_each_does_what_megatron_does(base, tmp_path):
    save = _copy(base, tmp_path)
    longer = [*_flags(base["data"], iters=8), "--load", str(save)]
    # Three independent launches, started together: only the first has --save (the two others only read).
    refused, override, use_checkpoint = (_start(*longer, "--save", str(save)),
                                         _start(*longer, "--override-opt_param-scheduler"),
                                         _start(*longer, "--use-checkpoint-opt_param-scheduler"))
    proc = refused.result()
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler",
                    "is 32 in this launch but 16 in the checkpoint")
    gbs = 4
    # Override: the launch's schedule (decay over 8 iterations), continued from the checkpoint's step count.
    proc = override.result()
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = _lrs(proc.stdout)
    assert sorted(got) == [5, 6, 7, 8]
    for it, lr in got.items():
        assert lr == pytest.approx(_cosine_lr(it * gbs, 1 * gbs, 8 * gbs), rel=1e-5), it
    # Use the checkpoint's: its decay ended at iteration 4, so the rate stays at --min-lr.
    proc = use_checkpoint.result()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _lrs(proc.stdout) == pytest.approx({5: 3e-4, 6: 3e-4, 7: 3e-4, 8: 3e-4})
    _assert_last_complete(save, 4)  # the refused launch wrote nothing


def test_train_iters_at_or_below_the_checkpoint_leaves_it_untouched(base, tmp_path):
    save = _copy(base, tmp_path)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in save.rglob("*") if p.is_file()}
    proc = _run(*_flags(base["data"], iters=3), "--load", str(save), "--save", str(save))
    assert proc.returncode == 0
    assert "nothing to train: the checkpoint in" in proc.stdout and "--train-iters is 3" in proc.stdout
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in save.rglob("*") if p.is_file()}
    assert after == before


# ---- data --------------------------------------------------------------------------------------------------
def _dataset(prefix: Path, docs: list[list[int]]) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture(scope="module")
def bad_data_runs(base, tmp_path_factory) -> dict:
    """{case: (folder, data prefix, expected words, the finished run)}: the three runs started together."""
    started = {}
    for case in ("empty", "ids", "split"):
        tmp_path = tmp_path_factory.mktemp(f"bad_data_{case}")
        if case == "empty":
            data, extra, words = _dataset(tmp_path / "empty_text_document", []), [], ["hold no documents"]
        elif case == "ids":
            data = _dataset(tmp_path / "wide_text_document", [[5] * 40 + [2]] * 30 + [[5, 700, 2]])
            extra, words = [], ["wide_text_document.bin holds token id 700", "has 128 rows"]
        else:
            data, extra, words = (
                base["data"],
                ["--split", "0,0,100"],
                ["--split 0,0,100 leaves no training data"],
            )
        started[case] = (
            tmp_path,
            data,
            words,
            _start(*_flags(data), *extra, "--save", str(tmp_path / "ckpt")),
        )
    return {
        case: (tmp_path, data, words, run.result()) for case, (tmp_path, data, words, run) in started.items()
    }


@pytest.mark.parametrize("case", ["empty", "ids", "split"])
def test_bad_training_data_is_one_line_naming_the_file(bad_data_runs, case):
    tmp_path, data, words, proc = bad_data_runs[case]
    assert proc.returncode == 1
    _one_error_line(proc.stderr, *words, *([data] if case != "split" else []))
    assert "iteration " not in proc.stdout
    assert not (tmp_path / "ckpt" / layout.TRACKER_FILENAME).exists()


# ---- signals to torchrun workers ---------------------------------------------------------------------------
def _torchrun(flags: list[str], log_dir: Path) -> subprocess.Popen:
    """A real torchrun launch of one worker, which writes its output under ``log_dir`` (what its agent does
    with Ctrl-C is the test; two ranks meeting a signal: the SIGTERM tests)."""
    cmd = torchrun_command(PRETRAIN, *flags, nproc=1,
                           torchrun_args=("--log-dir", str(log_dir), "--redirects", "3", "--tee", "3"))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            cwd=REPO_ROOT, start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return
    pytest.fail(f"the run ended before {text!r}:\n" + "".join(lines[-40:]))


def _finish(proc: subprocess.Popen, lines: list[str], timeout: int = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # kill the agent and every descendant
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                p.kill()
            proc.wait(timeout=60)
    return "".join(lines) + out


def _worker_output(log_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(log_dir.rglob("*.log")))


def _workers_of_torchrun(script: list, flags: list[str]) -> StartedTorchrun:
    """The 2 workers torchrun would start (forked from a preloaded interpreter, one stdout and one stderr),
    started now: a scheduler's SIGTERM goes to every task, not through torchrun's agent."""
    return StartedTorchrun(*script, *flags, nproc=2, timeout=240)


def test_sigterm_with_exit_signal_handler_saves_and_exits_zero(base, tmp_path):
    save = tmp_path / "ckpt"
    flags = [*_flags(base["data"], iters=100000), "--save", str(save), "--exit-signal-handler"]
    run = _workers_of_torchrun([PRETRAIN], flags)
    try:
        wait_for_output(run, "iteration        3/")
        signal_launch(run, signal.SIGTERM)  # as a scheduler (SLURM) signals every task
    finally:
        codes = exit_statuses(run)
    proc = run.result(check=False)
    assert codes == [0, 0], proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(
        r"exiting program after receiving SIGTERM at iteration (\d+) \(--exit-signal-handler\): "
        r"checkpoint saved",
        proc.stdout + proc.stderr,
    )
    assert found, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    _assert_last_complete(save, int(found.group(1)))


def test_sigterm_during_a_save_removes_its_temporaries_and_exits_143(base, tmp_path):
    """A test script holds rank 0 inside the save of iteration 3 (its .tmp written); SIGTERM to both
    workers."""
    save = tmp_path / "ckpt"
    flags = [*_flags(base["data"], iters=100000), "--save", str(save), "--save-interval", "1"]
    run = _workers_of_torchrun([PAUSED_IN_SAVE, "3"], flags)
    try:
        wait_for_output(run, "paused in checkpoint save at iteration 3")
        assert list((save / "iter_0000003").rglob("*.tmp"))
        signal_launch(run, signal.SIGTERM)
    finally:
        codes = exit_statuses(run)
    proc = run.result(check=False)
    assert codes == [143, 143], (codes, proc.stdout[-3000:] + proc.stderr[-3000:])
    _one_error_line(proc.stdout + proc.stderr, "interrupted by SIGTERM during iteration 3",
                    f"kept: iteration 2 in {save}")
    _assert_last_complete(save, 2)
    assert not (save / "iter_0000003").exists()


def test_ctrl_c_to_torchrun_exits_130_and_keeps_the_last_checkpoint(base, tmp_path):
    save = tmp_path / "ckpt"
    flags = [*_flags(base["data"], iters=100000), "--save", str(save), "--save-interval", "2"]
    proc, lines = _torchrun(flags, tmp_path / "logs"), []
    _wait_for(proc, "successfully saved checkpoint from iteration       4", lines)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches the agent; it forwards SIGINT to its workers
    out = _finish(proc, lines)
    assert proc.returncode != 0
    assert re.search(r"exitcode\s*:\s*130", out) or "SIGINT" in out, out[-3000:]
    workers = _worker_output(tmp_path / "logs")
    assert "Traceback" not in workers
    last = layout.read_tracker(save)
    assert last >= 4 and last % 2 == 0
    _assert_last_complete(save, last)
