"""A damaged torch_dist checkpoint: one line naming the file and what is wrong, for the converter, the
trainer's resume and inference alike, checked before megatron-core reads it; nothing written, nothing
changed. The library readers see every damage; one pretrain_gpt.py and one inference.py launch show the
exit status (1 from training ranks, 2 from the tools), the line and no traceback as a user sees them. A
failed torch_dist save (the file-size limit standing in for a full disk) is one line too.

One tiny torch_dist checkpoint (the format's own save, one process) is copied and damaged per case.
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import shutil
import signal
import warnings

import pytest
import torch

from mindspeed_llm.convert.cli import main as convert_main
from mindspeed_llm.runtime import checkpoint
from mindspeed_llm.runtime.checkpoint import dist_format, layout
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError
from mindspeed_llm.runtime.errors import SaveError
from mindspeed_llm.runtime.state import TrainState
from tests.checkpoint.test_record import _inference, _model, _trainer
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.e2e.pretrain_helpers import (
    PRETRAIN,
    convert_hf_to_mg,
    make_indexed_dataset,
    model_flags,
    train_flags,
)
from tests.helpers.launch import StartedTorchrun
from tests.helpers.tiny import save_word_tokenizer
from tests.inference.helpers import INFERENCE
from tests.ops.megatron_env import single_process_model_parallel
from tests.tool_process import leftovers, tree_digest

IT = "iter_0000001"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_damage")
    hf = root / "hf"
    make_tiny_hf_model(str(hf), "qwen2", num_layers=2)
    legacy = convert_hf_to_mg(hf, root / "torch")
    record = checkpoint.read_record(str(legacy))
    with single_process_model_parallel():
        model = _model(hf)
        state = layout.load_rank_file(layout.checkpoint_file_for(legacy, 1, 0, 0, 1), mmap=False)
        model.load_state_dict(state["model"], strict=True)
        flags = argparse.Namespace(save=str(root / "dist"), no_save_optim=True,
                                   use_distributed_optimizer=False)
        dist_format.save(TrainState(iteration=1), record, state["args"], [model], None, None, flags)
    return {"hf": hf, "dist": root / "dist", "record": record, "state": state}


def _shard(folder, largest=True):
    shards = sorted((folder / IT).glob("*.distcp"), key=lambda p: p.stat().st_size)
    return shards[-1] if largest else shards[0]


def _damage(folder, case):
    it = folder / IT
    if case == "half_shard":
        p = _shard(folder)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return p, f"holds {p.stat().st_size} bytes, {it / '.metadata'} records"
    if case == "empty_shard":
        p = _shard(folder, largest=False)
        p.write_bytes(b"")
        return p, f"holds 0 bytes, {it / '.metadata'} records"
    if case == "missing_shard":
        p = _shard(folder)
        p.unlink()
        return p, f"not found, but {it / '.metadata'} names it"
    if case == "no_index":
        (it / ".metadata").unlink()
        return it / ".metadata", "not found: the torch_dist checkpoint has no index of its tensors"
    if case == "junk_index":
        (it / ".metadata").write_bytes(b"junk" * 16)
        return it / ".metadata", "cannot be read ("
    if case == "no_common":
        (it / "common.pt").unlink()
        return it / "common.pt", "not found: the distributed checkpoint is incomplete"
    if case == "junk_common":
        (it / "common.pt").write_bytes(b"junk" * 16)
        return it / "common.pt", "cannot be read ("
    if case == "no_marker":
        (it / "metadata.json").unlink()
        return it / "metadata.json", "not found: "
    if case == "junk_marker":
        (it / "metadata.json").write_text("{not json")
        return it / "metadata.json", "cannot be read ("
    raise AssertionError(case)


CASES = ["half_shard", "empty_shard", "missing_shard", "no_index", "junk_index", "no_common", "junk_common",
         "no_marker", "junk_marker"]


def test_every_damage_is_one_line_naming_the_file_for_every_reader(dist, tmp_path, capsys):
    """The converter (exit 2, nothing written), the trainer's first read, inference's load: the same line."""
    for case in CASES:
        folder = shutil.copytree(dist["dist"], tmp_path / case)
        path, words = _damage(folder, case)
        before = tree_digest(folder)
        out = tmp_path / f"{case}_hf"
        code = convert_main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(folder),
                             "--save-dir", str(out), "--no-progress"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, (case, err)
        assert len(lines) == 1 and lines[0].startswith(f"error: {path} {words}"), (case, err)
        assert "mp_rank_00" not in lines[0]
        assert not out.exists() and leftovers(tmp_path) == []
        for read in (_trainer, lambda root: _inference(root, dist["hf"])):
            with pytest.raises(CheckpointError) as exc:
                read(folder)
            assert f"error: {exc.value}" == lines[0], case
        assert tree_digest(folder) == before, case


def test_pretrain_and_inference_launches_refuse_a_damaged_checkpoint_with_one_line(dist, tmp_path):
    """The real launches, side by side: pretrain_gpt.py resuming on two ranks from a truncated shard exits 1,
    inference.py on a folder whose ``.metadata`` is junk exits 2 (a tool's refusal, as convert_ckpt.py);
    each prints the one line naming the file, once, without a traceback, and changes no file of the folder."""
    damaged = {}
    for case in ("half_shard", "junk_index"):
        folder = shutil.copytree(dist["dist"], tmp_path / case)
        damaged[case] = (folder, *_damage(folder, case), tree_digest(folder))
    data = make_indexed_dataset(tmp_path / "data" / "corpus_text_document")
    save_word_tokenizer(tmp_path / "tok", 120)  # its own folder: next to config.json it would load as BPE
    model = model_flags(dist["hf"])
    training = StartedTorchrun(PRETRAIN, *model, *train_flags(data), "--load", damaged["half_shard"][0],
                               nproc=2, timeout=240)
    inference = StartedTorchrun(INFERENCE, *model, "--load", damaged["junk_index"][0],
                                "--tokenizer-name-or-path", tmp_path / "tok", "--max-new-tokens", "2",
                                "--prompt", "w5 w6", nproc=1, timeout=240)
    for case, launch, status in (("half_shard", training, 1), ("junk_index", inference, 2)):
        folder, path, words, before = damaged[case]
        run = launch.result(check=False)
        output = run.stdout + run.stderr
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert run.returncode == status, (case, output[-3000:])
        assert "Traceback" not in output, (case, output[-3000:])
        assert len(errors) == 1 and errors[0].startswith(f"error: {path} {words}"), (case, output[-3000:])
        assert run.stderr.strip().splitlines() == errors, (case, run.stderr[-3000:])  # nothing else, once
        assert tree_digest(folder) == before and leftovers(folder) == [], case


def test_a_sound_checkpoint_loads_without_megatron_core_warnings(dist, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        weights = _inference(dist["dist"], dist["hf"])
        code = convert_main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
                             str(dist["dist"]), "--save-dir", str(tmp_path / "hf"), "--no-progress"])
    assert code == 0
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
    assert "FutureWarning" not in capsys.readouterr().err
    reference = dist["state"]["model"]
    assert all(torch.equal(weights[k], reference[k]) for k in weights if not k.endswith("_extra_state"))


def test_a_failed_torch_dist_save_is_one_line_and_keeps_the_previous_checkpoint(dist, tmp_path, caplog):
    """A file-size limit below a shard's size makes megatron-core's writer fail (EFBIG, as ENOSPC would).
    megatron-core logs the failure at ERROR (``Local process N encountered an error``) before raising it: an
    observer placed ahead of the save's filter sees that record, the log handlers do not."""
    writer = logging.getLogger(dist_format._WRITER_LOGGER)
    seen_by_megatron: list[str] = []

    def observe(record: logging.LogRecord) -> bool:
        seen_by_megatron.append(record.getMessage())
        return True

    writer.addFilter(observe)
    caplog.set_level(logging.DEBUG, logger=dist_format._WRITER_LOGGER)
    save = shutil.copytree(dist["dist"], tmp_path / "save")
    before = tree_digest(save)
    limit = _shard(save, largest=False).stat().st_size // 2
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with single_process_model_parallel():
        model = _model(dist["hf"])
        model.load_state_dict(dist["state"]["model"], strict=True)
        flags = argparse.Namespace(save=str(save), no_save_optim=True, use_distributed_optimizer=False)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
        try:
            with pytest.raises(SaveError) as exc:
                dist_format.save(TrainState(iteration=2), dist["record"], dist["state"]["args"], [model],
                                 None, None, flags)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
            writer.removeFilter(observe)
    megatron_said = [m for m in seen_by_megatron if re.match(r"Local process \d+ encountered an error: ", m)]
    assert megatron_said, "\n".join(seen_by_megatron)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert writer.filters == []  # the save's filter is gone with the save
    line = str(exc.value)
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"could not write the torch_dist checkpoint {save / 'iter_0000002.tmp'} (")
    assert "file-size limit" in line or "disk is full" in line or "File too large" in line
    assert f"the last complete checkpoint stays: iteration 1 in {save}" in line
    assert tree_digest(save) == before and leftovers(save) == [] and not (save / "iter_0000002.tmp").exists()
