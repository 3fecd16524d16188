"""The pieces behind "nothing lost": the --save lock, damaged tracker/rank files, data file checks, errors'
exit codes.

Real files and real processes (a second process holds the lock); the end-to-end runs are in
tests/e2e/test_pretrain_resilience.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from mindspeed_llm.convert.errors import CheckpointError
from mindspeed_llm.runtime import save_lock
from mindspeed_llm.runtime.checkpoint import layout
from mindspeed_llm.runtime.checkpoint.layout import load_rank_file
from mindspeed_llm.runtime.errors import DataError, SaveError, TrainingInterrupted
from mindspeed_llm.training.data import (
    check_indexed_dataset,
    check_token_ids,
    checked_batches,
    largest_token_id,
)
from tests.conftest import REPO_ROOT


def _write_dataset(prefix, docs: list[list[int]], dtype=np.uint16) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


# ---- the --save lock ---------------------------------------------------------------------------------------
_HOLD = """
import sys, time
from mindspeed_llm.runtime import save_lock
save_lock.lock_save_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_host_and_pid_and_a_dead_one_holds_nothing(tmp_path):
    save = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(save)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SaveError) as err:
            save_lock.lock_save_folder(str(save))
        assert (
            f"--save {save} is in use by another training run (host {socket.gethostname()}, PID {holder.pid}"
            in str(err.value)
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # kill -9 released the flock: the lock is ours now, and says so in the file.
    save_lock.lock_save_folder(str(save))
    try:
        assert (save / save_lock.LOCK_FILENAME).read_text().split()[:2] == [
            socket.gethostname(),
            str(os.getpid()),
        ]
    finally:
        save_lock.release_save_folder(str(save))


def test_another_node_of_the_same_run_is_not_refused(tmp_path, monkeypatch):
    """--no-shared-storage on a folder that is shared after all: the lock's run tag says it is one run."""
    save = tmp_path / "ckpt"
    run = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000", "TORCHELASTIC_RUN_ID": "job-7"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(save)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **run})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for key, value in run.items():
            monkeypatch.setenv(key, value)
        save_lock.lock_save_folder(str(save))  # same run: goes on without the lock
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-8")
        with pytest.raises(SaveError, match="in use by another training run"):
            save_lock.lock_save_folder(str(save))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)


def test_stale_temporaries_are_removed_but_complete_files_stay(tmp_path):
    rank = tmp_path / "iter_0000004" / "mp_rank_00"
    rank.mkdir(parents=True)
    (rank / "model_optim_rng.pt.tmp").write_bytes(b"half")
    (rank / "model_optim_rng.pt").write_bytes(b"whole")
    (tmp_path / "latest_checkpointed_iteration.txt.tmp").write_text("4")
    removed = save_lock.remove_stale_temporaries(str(tmp_path))
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["model_optim_rng.pt"]


def test_unwritable_save_folder_is_refused(tmp_path):
    if os.geteuid() == 0:
        target = "/sys/fs/mindspeed_llm_no_such_ckpt"  # sysfs refuses new folders even to root
    else:
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o555)
        target = str(parent / "ckpt")
    with pytest.raises(SaveError, match=f"--save {target} is not writable"):
        save_lock.lock_save_folder(target)


# ---- damaged checkpoint files ------------------------------------------------------------------------------
def test_tracker_with_binary_junk_is_one_line(tmp_path):
    (tmp_path / layout.TRACKER_FILENAME).write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(
        CheckpointError,
        match=r"latest_checkpointed_iteration.txt holds binary data, expected an "
        r"iteration number",
    ):
        layout.read_tracker(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_damaged_rank_file_names_the_file(tmp_path, damage):
    path = tmp_path / "model_optim_rng.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}, "iteration": 3}, path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}[damage]
    )
    for mmap in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_rank_file(str(path), mmap=mmap)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message
        assert ("empty (0 bytes)" if damage == "empty" else "damaged or not a torch checkpoint") in message


# ---- data files --------------------------------------------------------------------------------------------
def test_empty_dataset_is_refused_before_megatron_reads_it(tmp_path):
    prefix = _write_dataset(tmp_path / "empty_text_document", [])
    with pytest.raises(DataError, match="empty_text_document.bin/.idx hold no documents"):
        check_indexed_dataset(prefix)


def test_bin_and_idx_of_different_sizes_are_refused(tmp_path):
    prefix = _write_dataset(tmp_path / "c_text_document", [[5] * 40 + [2]] * 10)
    assert check_indexed_dataset(prefix) == 410
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(500)
    with pytest.raises(
        DataError, match=r"c_text_document.bin has 500 bytes but .*c_text_document.idx describes 820"
    ):
        check_indexed_dataset(prefix)
    (tmp_path / "c_text_document.idx").write_bytes(b"MMIDIDX\x00\x00junk")
    with pytest.raises(DataError, match="c_text_document.idx is damaged"):
        check_indexed_dataset(prefix)


def test_token_ids_beyond_the_vocabulary_name_the_file(tmp_path):
    good = _write_dataset(tmp_path / "good_text_document", [[3, 4, 127]] * 5)
    bad = _write_dataset(tmp_path / "bad_text_document", [[3, 4, 5]] * 1000 + [[7, 300, 2]], dtype=np.int32)
    assert largest_token_id(bad) == 300  # the chunked max over the memory map
    assert check_token_ids([good], 128)
    with pytest.raises(
        DataError,
        match=r"bad_text_document.bin holds token id 300, but the model's vocabulary "
        r"\(padded\) has 128 rows",
    ):
        check_token_ids([good, bad], 128)
    assert not check_token_ids(
        [good, bad], 128, limit_bytes=10
    )  # too big to scan at start: batches are checked
    batches = [{"tokens": torch.tensor([[3, 4]])}, {"tokens": torch.tensor([[7, 300]])}]
    checked = checked_batches(iter(batches), 128, [good, bad])
    assert next(checked) is batches[0]
    with pytest.raises(DataError, match="bad_text_document.bin holds token id 300"):
        next(checked)


def test_interrupt_exit_codes_are_the_shells():
    assert TrainingInterrupted(signal.SIGINT).exit_code == 130
    assert TrainingInterrupted(signal.SIGTERM).exit_code == 143
