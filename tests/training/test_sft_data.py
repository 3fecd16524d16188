"""Instruction fine-tuning on the training side without launching: flags, --data-path checks, micro-batches.

The micro-batch rules are checked against values written out by hand from the module's contract
(transformers' shift: token t predicts token t+1; -100 not learned; positions restart per packed sample).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mindspeed_llm.config.flags import ArgumentError, parse_args
from mindspeed_llm.config.paths import check_instruction_prefix
from mindspeed_llm.config.validate import validate_args
from mindspeed_llm.training.instruction_data import InstructionCollator, split_documents
from tests.e2e.pretrain_helpers import write_instruction_data

BASE = ("--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 5 --lr 1e-3 "
        "--swiglu --disable-bias-linear --tokenizer-type NullTokenizer --vocab-size 100 --data-path d")


def args_for(extra: str = "", world: int = 1):
    return validate_args(parse_args((BASE + " " + extra).split()), world)


def test_stage_sft_means_instruction_data_and_token_weighted_loss():
    args = args_for("--stage sft --prompt-type qwen --variable-seq-lengths")
    assert args.is_instruction_dataset and args.calculate_per_token_loss
    assert args.no_pad_to_seq_lengths and args.variable_seq_lengths  # MindSpeed-LLM: one implies the other
    assert args.prompt_type == "qwen"
    assert not args_for("").calculate_per_token_loss  # pretraining keeps Megatron-LM's default


@pytest.mark.parametrize("extra, words", [
    ("--prompt-type qwen", ["--prompt-type", "posttrain_gpt.py --stage sft"]),
    ("--no-pad-to-seq-lengths", ["--no-pad-to-seq-lengths", "instruction data"]),
    ("--stage sft --reset-position-ids", ["--reset-position-ids", "--reset-attention-mask"]),
    ("--stage sft --eod-mask-loss", ["--eod-mask-loss", "labels -100"]),
    ("--stage sft --mock-data", ["--mock-data", "one --data-path PREFIX"]),
    ("--stage sft --pad-to-multiple-of 0", ["--pad-to-multiple-of"]),
])
def test_sft_flags_without_their_setting_are_refused_with_the_fix(extra, words):
    with pytest.raises(ArgumentError) as err:
        args_for(extra)
    for word in words:
        assert word in str(err.value)


def test_blend_and_odd_pad_multiple_with_sequence_parallel_are_refused():
    with pytest.raises(ArgumentError, match="one PREFIX, not a blend"):
        validate_args(parse_args((BASE + " 0.5 e --stage sft").split()), 1)
    with pytest.raises(ArgumentError, match="--pad-to-multiple-of 16"):
        args_for("--stage sft --no-pad-to-seq-lengths --pad-to-multiple-of 3 --tensor-model-parallel-size 2 "
                 "--sequence-parallel", world=2)


def test_reset_attention_mask_implies_per_document_positions():
    args = args_for("--stage sft --reset-attention-mask")
    assert args.reset_position_ids


def _data(tmp_path, name="alpaca"):
    ids = np.arange(3, 13)
    return write_instruction_data(tmp_path / name, [(ids, np.ones_like(ids), ids)])


def test_data_path_errors_name_the_files_and_the_fix(tmp_path):
    prefix = _data(tmp_path)
    check_instruction_prefix(prefix)
    with pytest.raises(ArgumentError, match=rf"try --data-path {prefix}$"):
        check_instruction_prefix(prefix + "_packed_labels_document")
    for suffix in (".bin", ".idx"):
        (tmp_path / f"alpaca_packed_labels_document{suffix}").unlink()
    with pytest.raises(ArgumentError, match="_packed_labels_document.{bin,idx} not found .*re-run it"):
        check_instruction_prefix(prefix)
    with pytest.raises(ArgumentError, match=f"instruction data there: --data-path {prefix}"):
        check_instruction_prefix(str(tmp_path / "alpacca"))
    (tmp_path / "pre_text_document.idx").write_bytes(b"")
    with pytest.raises(
        ArgumentError, match="is pretraining data .*--handler-name AlpacaStyleInstructionHandler"
    ):
        check_instruction_prefix(str(tmp_path / "pre"))


def _sample(ids, labels, mask=None):
    ids = np.asarray(ids)
    return {"input_ids": ids, "labels": np.asarray(labels),
            "attention_mask": np.ones_like(ids) if mask is None else np.asarray(mask)}


def test_collator_shifts_labels_pads_and_cuts():
    collate = InstructionCollator(seq_length=6, pad_id=99)
    batch = collate([_sample([5, 6, 7, 8], [-100, -100, 7, 8]),
                     _sample([1, 2, 3, 4, 5, 6, 7, 8], [-100, 2, 3, 4, 5, 6, 7, 8])])
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 99, 99], [1, 2, 3, 4, 5, 6]]
    # token t learns the label of token t+1; the last token of a sample (and padding) learns nothing
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[0, 7, 8, 0, 0, 0], [2, 3, 4, 5, 6, 0]]
    assert batch["position_ids"].tolist() == [list(range(6))] * 2
    assert batch["tokens"].dtype == torch.int64 and batch["loss_mask"].dtype == torch.float32


def test_collator_without_padding_to_seq_length_rounds_the_longest_sample():
    collate = InstructionCollator(seq_length=16, pad_id=0, pad_to_multiple_of=4)
    assert collate([_sample([1] * 5, [1] * 5), _sample([1] * 3, [1] * 3)])["tokens"].shape == (2, 8)
    assert collate([_sample([1] * 15, [1] * 15)])["tokens"].shape == (1, 16)
    assert collate([_sample([1] * 40, [1] * 40)])["tokens"].shape == (1, 16)  # cut, never longer


def test_collator_restarts_positions_per_packed_sample():
    collate = InstructionCollator(seq_length=8, pad_id=0, reset_position_ids=True)
    batch = collate([_sample([4, 5, 6, 7, 8, 9, 0, 0], [-100, 5, 6, -100, 8, 9, -100, -100],
                             mask=[1, 1, 1, 2, 2, 2, 0, 0])])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    # the first sample's last token (6) does not learn the second sample's first token
    assert batch["loss_mask"].tolist() == [[1, 1, 0, 1, 1, 0, 0, 0]]


def test_split_documents_follow_megatron_rounding():
    train, valid, test = split_documents("969,30,1", 1000)
    assert (len(train), len(valid), len(test)) == (969, 30, 1)
    assert [len(s) for s in split_documents("100,0,0", 7)] == [7, 0, 0]


def test_posttrain_without_stage_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "posttrain_gpt.py"), *BASE.split()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: posttrain_gpt.py needs --stage sft (instruction fine-tuning on "
                                   "preprocess_data.py's instruction data) or --stage dpo|simpo|orpo "
                                   "(preference alignment on pairwise data); pretraining is pretrain_gpt.py")


def test_sample_order_depends_on_the_seed_only_and_covers_every_sample_each_epoch(tmp_path):
    """The data position in a checkpoint is a sample count: resuming needs the same order in a new process."""
    from mindspeed_llm.training.data import PretrainingBatchSampler
    from mindspeed_llm.training.instruction_data import InstructionDataset

    rows = [(np.arange(3, 3 + n), np.ones(n, dtype=np.int64), np.arange(3, 3 + n)) for n in (4, 5, 6, 7, 8)]
    prefix = write_instruction_data(tmp_path / "d", rows)
    docs = np.arange(5)
    a, b = (
        InstructionDataset(prefix, docs, 12, seed=7, name="train"),
        InstructionDataset(prefix, docs, 12, 7, "t"),
    )
    assert len(a) == 15 and a.order.tolist() == b.order.tolist()
    assert InstructionDataset(prefix, docs, 12, seed=8, name="train").order.tolist() != a.order.tolist()
    for epoch in range(3):
        assert sorted(a.order[5 * epoch:5 * epoch + 5].tolist()) == list(range(5))
    assert a[0]["input_ids"].size == rows[a.order[0]][0].size
    unbroken = list(PretrainingBatchSampler(len(a), 0, 2, 0, 1))
    assert list(PretrainingBatchSampler(len(a), 6, 2, 0, 1)) == unbroken[3:]  # resumed after 6 samples
