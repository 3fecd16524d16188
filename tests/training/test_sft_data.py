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


def test_data_with_no_learned_token_within_seq_length_is_refused_naming_the_shortest_prompt(tmp_path):
    """Sample A: a 6-token prompt then 4 answer tokens; B: an 8-token prompt then 4. The collator's shift
    (token t learns label t+1) means a sample keeps a learned token within --seq-length S iff its prompt is
    shorter than S: A from S = 7 on."""
    from mindspeed_llm.runtime.errors import DataError
    from mindspeed_llm.training.instruction_data import check_instruction_data

    rows = []
    for prompt, answer in ((6, 4), (8, 4)):
        ids = np.arange(3, 3 + prompt + answer)
        labels = np.concatenate([np.full(prompt, -100), ids[prompt:]])
        rows.append((ids, np.ones(ids.size, dtype=np.int64), labels))
    prefix = write_instruction_data(tmp_path / "d", rows)
    collate = InstructionCollator(6, pad_id=0)
    samples = [_sample(ids, labels) for ids, _, labels in rows]
    assert collate(samples)["loss_mask"].sum() == 0  # S = 6: every step would train on nothing
    assert InstructionCollator(7, pad_id=0)(samples)["loss_mask"].sum() == 1  # S = 7: A's first answer token
    assert check_instruction_data(prefix, 7, False)["samples"] == 2
    with pytest.raises(DataError) as err:
        check_instruction_data(prefix, 6, False)
    assert str(err.value) == (
        "--seq-length 6: no sample keeps a token to learn within its first 6 tokens (the shortest prompt is "
        "6 tokens): every step would train on nothing; raise --seq-length above 6, or shorten the prompts")
    silent = write_instruction_data(tmp_path / "none",
                                    [(ids, mask, np.full(ids.size, -100)) for ids, mask, _ in rows])
    with pytest.raises(DataError, match="no sample has a token to learn"):
        check_instruction_data(silent, 64, False)


def test_a_batch_without_a_learned_token_has_no_loss_and_stays_out_of_the_averages(capsys):
    """[loss sum, token count] = [0, 0]: no loss (not 0.0). Averaged with 2.0 and 4.0 it would give 2.0
    instead of 3.0."""
    from mindspeed_llm.runtime.state import TrainState
    from mindspeed_llm.training.training import _reduce_losses
    from mindspeed_llm.training.training_log import TrainingLogger
    from tests.ops.megatron_env import single_process_model_parallel

    with single_process_model_parallel():
        assert _reduce_losses([{"lm loss": torch.tensor([0.0, 0.0])}] * 2) == {"lm loss": None}
        assert _reduce_losses([{"lm loss": torch.tensor([6.0, 3.0])}]) == {"lm loss": 2.0}
        import argparse

        log = TrainingLogger(argparse.Namespace(**{**vars(args_for("--log-interval 3")), "world_size": 1,
                                                 "padded_vocab_size": 128}))
        state = TrainState()
        for value in (2.0, None, 4.0):
            state.iteration += 1
            log.step(state, {"lm loss": value}, 1e-3, 1.0, 1.0, False, 0.1)
    line = [ln for ln in capsys.readouterr().out.splitlines() if "iteration        3/" in ln][0]
    assert "lm loss: 3.000000E+00 |" in line
    assert "iterations without a token to learn (no loss):   1 |" in line


def test_neat_packed_data_without_reset_attention_mask_is_warned_once_with_the_reason(tmp_path, capsys):
    import argparse

    from mindspeed_llm.training.instruction_data import build_instruction_datasets, check_instruction_data
    from tests.ops.megatron_env import single_process_model_parallel

    ids = np.arange(3, 11)
    labels = np.where(np.arange(8) % 4 >= 2, ids, -100)
    two_samples = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    packed = write_instruction_data(tmp_path / "neat", [(ids, two_samples, labels)] * 2)
    plain = write_instruction_data(tmp_path / "plain", [(ids, np.ones(8, dtype=np.int64), labels)] * 2)
    assert check_instruction_data(packed, 8, True)["neat_packed"]
    assert not check_instruction_data(plain, 8, False)["neat_packed"]
    args = argparse.Namespace(data_path=[packed], seq_length=8, reset_attention_mask=False, split="100,0,0",
                              seed=1, prompt_type="qwen", no_mmap_bin_files=False, pad_to_multiple_of=8,
                              no_pad_to_seq_lengths=False, reset_position_ids=False)
    tokenizer = argparse.Namespace(eod=0)
    with single_process_model_parallel():
        build_instruction_datasets(args, tokenizer, [4, 0, 0], True)
        warned = [ln for ln in capsys.readouterr().out.splitlines() if "WARNING" in ln]
        assert warned == [f"> WARNING: {packed} is neat-packed (preprocess_data.py --neat-pack: several "
                          "samples per sequence), trained without --reset-attention-mask: every pack's "
                          "samples attend to each other and their positions run on; add "
                          "--reset-attention-mask to train each sample on its own"]
        reset = argparse.Namespace(**{**vars(args), "reset_attention_mask": True, "reset_position_ids": True})
        build_instruction_datasets(reset, tokenizer, [4, 0, 0], True)
        args.data_path = [plain]
        build_instruction_datasets(args, tokenizer, [4, 0, 0], True)
        assert "WARNING" not in capsys.readouterr().out
