"""The checkpoint record and the one detector, as the trainer, inference and the converter each meet them.

Real folders: a converted checkpoint (torch format), the same weights saved in torch_dist by the format's
own save (megatron-core's dist_checkpointing, one process), an empty folder and damaged ones. Every
reader must give the detector's answer: the same format, or the same one-line error.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil

import pytest
import torch

from mindspeed_llm.convert.cli import main as convert_main
from mindspeed_llm.convert.sources import DistSource, MgSource, open_mg_source
from mindspeed_llm.runtime import checkpoint
from mindspeed_llm.runtime.checkpoint import dist_format, layout
from mindspeed_llm.runtime.checkpoint.detect import TORCH, TORCH_DIST, detect_format
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError
from mindspeed_llm.runtime.checkpoint.launch import read_checkpoint_record
from mindspeed_llm.runtime.checkpoint.locate import find_checkpoint
from mindspeed_llm.runtime.checkpoint.record import (
    RECORD_KEY,
    RECORD_VERSION,
    CheckpointRecord,
    LayoutRecord,
    ModelRecord,
    ProgressRecord,
)
from mindspeed_llm.runtime.state import TrainState
from tests.checkpoint.tiny_models import make_tiny_hf_model
from tests.e2e.pretrain_helpers import convert_hf_to_mg
from tests.ops.megatron_env import single_process_model_parallel


def _launch(load, **changes) -> argparse.Namespace:
    """The flags a trainer or inference launch reads when it loads ``load`` (TP1 PP1, weights only)."""
    return argparse.Namespace(**{
        "load": str(load), "save": None, "ckpt_step": None, "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1, "finetune": False, "no_load_optim": True, "no_load_rng": True,
        "use_distributed_optimizer": False, "check_for_nan_in_loss_and_grad": True, "lora_target_modules": [],
        "global_batch_size": 4, "eval_interval": None, "data_parallel_random_init": False, **changes})


def _model(hf):
    from mindspeed_llm.models.builder import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig

    return build_gpt_model(ModelConfig.from_hf_config(str(hf)), padded_vocab_size=128, pre_process=True,
                           post_process=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{kind: folder}: torch (converted), torch_dist (the same weights saved by dist_format.save), empty,
    damaged."""
    root = tmp_path_factory.mktemp("detect")
    hf = root / "hf"
    make_tiny_hf_model(str(hf), "qwen2", num_layers=2)
    legacy = convert_hf_to_mg(hf, root / "torch")
    out = {"hf": hf, "torch": legacy, "torch_dist": root / "torch_dist", "empty": root / "empty"}
    out["empty"].mkdir()
    record = checkpoint.read_record(str(legacy))
    with single_process_model_parallel():
        model = _model(hf)
        state = layout.load_rank_file(layout.checkpoint_file_for(legacy, 1, 0, 0, 1), mmap=False)
        model.load_state_dict(state["model"], strict=True)
        save_flags = argparse.Namespace(save=str(out["torch_dist"]), no_save_optim=True,
                                        use_distributed_optimizer=False)
        dist_format.save(TrainState(iteration=1), record, state["args"], [model], None, None, save_flags)

    # Damaged: the tracker names a missing folder; an iteration folder holding neither format; torch_dist
    # without its common.pt; a tracker of binary junk.
    missing = shutil.copytree(legacy, root / "missing_iteration")
    shutil.rmtree(missing / "iter_0000001")
    neither = root / "neither"
    (neither / "iter_0000001").mkdir(parents=True)
    (neither / "iter_0000001" / "notes.txt").write_text("x")
    layout.write_tracker(neither, 1)
    no_common = shutil.copytree(out["torch_dist"], root / "dist_without_common")
    (no_common / "iter_0000001" / "common.pt").unlink()
    junk = shutil.copytree(legacy, root / "junk_tracker")
    (junk / layout.TRACKER_FILENAME).write_bytes(bytes(range(128, 192)))
    out.update(missing_iteration=missing, neither=neither, dist_without_common=no_common, junk_tracker=junk)
    return out


def _trainer(root):
    """What the trainer does first with --load: the iteration, then this rank's view of the record."""
    args = _launch(root)
    return read_checkpoint_record(args, find_checkpoint(args))[0]


def _inference(root, hf):
    """What inference does: the iteration, then the weights only into its model."""
    args = _launch(root)
    with single_process_model_parallel():
        model = _model(hf)
        checkpoint.load([model], None, None, args, find_checkpoint(args))
        return {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def _converter(root):
    source = open_mg_source(str(root))
    source.close()
    return source


def _error(call) -> str:
    with pytest.raises(CheckpointError) as err:
        call()
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "kind, fmt, source", [("torch", TORCH, MgSource), ("torch_dist", TORCH_DIST, DistSource)]
)
def test_one_detector_the_three_readers_agree_on_a_checkpoint(folders, kind, fmt, source):
    root = folders[kind]
    assert detect_format(root) == fmt
    assert isinstance(_converter(root), source)
    record = _trainer(root)
    assert (record.layout.tp, record.layout.pp, record.model.padded_vocab_size) == (1, 1, 128)
    assert record == checkpoint.read_record(str(root)) == _converter(root).record
    weights = _inference(root, folders["hf"])
    reference = layout.load_rank_file(layout.checkpoint_file_for(folders["torch"], 1, 0, 0, 1))["model"]
    assert all(torch.equal(weights[k], reference[k]) for k in weights if not k.endswith("_extra_state"))


def test_an_empty_folder_holds_no_checkpoint_for_any_reader(folders):
    root = folders["empty"]
    assert detect_format(root) is None
    assert "no checkpoint there" in _error(lambda: _trainer(root))
    assert "no checkpoint there" in _error(lambda: _inference(root, folders["hf"]))
    assert f"--load-dir {root} is empty" in _error(lambda: _converter(root))


@pytest.mark.parametrize("kind, words", [
    ("missing_iteration", "iter_0000001 not found, but latest_checkpointed_iteration.txt names it"),
    ("neither", "holds neither mp_rank_*/model_optim_rng.pt (--ckpt-format torch) nor metadata.json"),
    ("dist_without_common", "common.pt not found: the distributed checkpoint is incomplete"),
    ("junk_tracker", "holds binary data, expected an iteration number"),
])
def test_a_damaged_folder_is_the_same_one_line_error_for_every_reader(folders, kind, words):
    root = folders[kind]
    detected = _error(lambda: detect_format(root) and checkpoint.read_record(str(root)))
    assert words in detected and str(root) in detected
    assert _error(lambda: _trainer(root)) == detected
    assert _error(lambda: _inference(root, folders["hf"])) == detected
    assert _error(lambda: _converter(root)) == detected


# ---- the record's version ----------------------------------------------------------------------------------
def _future(path) -> None:
    """Rewrite a file's record as a later version would (its args left as they are)."""
    state = torch.load(path, weights_only=False)
    state[RECORD_KEY]["version"] = RECORD_VERSION + 1
    torch.save(state, path)


def test_a_record_of_a_later_version_is_refused_naming_the_file_and_the_version(folders, tmp_path, capsys):
    legacy = shutil.copytree(folders["torch"], tmp_path / "torch")
    rank_file = layout.checkpoint_file_for(legacy, 1, 0, 0, 1)
    _future(rank_file)
    dist = shutil.copytree(folders["torch_dist"], tmp_path / "torch_dist")
    common = dist / "iter_0000001" / "common.pt"
    _future(common)
    words = (
        f"holds a checkpoint record of version {RECORD_VERSION + 1}; this mindspeed_llm reads versions up to "
        f"{RECORD_VERSION}"
    )
    readers = (_trainer, lambda root: _inference(root, folders["hf"]), _converter)
    for root, path in ((legacy, rank_file), (dist, common)):
        for read in readers:
            assert _error(functools.partial(read, root)).startswith(f"{path} {words}")
    # convert_ckpt.py: that one line, exit 2, nothing written
    assert convert_main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(legacy),
                         "--save-dir", str(tmp_path / "hf"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {rank_file} {words}: load it with the newer mindspeed_llm that wrote it"]
    assert not os.path.exists(tmp_path / "hf")


def test_the_record_round_trips_as_plain_data_and_a_foreign_one_is_damage(tmp_path):
    record = CheckpointRecord(
        model=ModelRecord(
            hf_config={"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            padded_vocab_size=256,
            params_dtype="bf16",
            settings={"num_layers": 2, "rotary_base": 5e5},
        ),
        layout=LayoutRecord(tp=2, pp=2, num_layer_list=(1, 3), vpp=None),
        progress=ProgressRecord(iteration=7),
    )
    path = tmp_path / "r.pt"
    torch.save({RECORD_KEY: record.to_dict()}, path)
    assert CheckpointRecord.from_dict(torch.load(path, weights_only=True)[RECORD_KEY], str(path)) == record
    args = record.megatron_args()
    assert (args.num_layer_list, args.params_dtype, args.bf16, args.rotary_base) == (
        "1,3",
        torch.bfloat16,
        True,
        5e5,
    )
    assert CheckpointRecord.from_megatron_args(args, iteration=7) == record
    foreign = record.to_dict()
    foreign["layout"]["pipeline_model_parallel_size"] = 2
    with pytest.raises(
        DamagedCheckpointError, match=f"{path}: its {RECORD_KEY} \\(version 1\\) does not fit"
    ):
        CheckpointRecord.from_dict(foreign, str(path))
    with pytest.raises(DamagedCheckpointError, match="not a versioned record"):
        CheckpointRecord.from_dict({"model": {}}, str(path))
