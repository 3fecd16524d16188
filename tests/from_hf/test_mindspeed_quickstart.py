"""MindSpeed-LLM master's Qwen3-8B quick start, its commands as written, at tiny sizes.

Its quick start (docs/zh/pytorch/training/quick_start.md) has no convert and no preprocess step: the user sets
the four paths of ``examples/mcore/qwen3/pretrain_qwen3_8b_4K_ptd.sh`` and ``tune_qwen3_8b_4K_full_ptd.sh``
to the downloaded HF folder and the alpaca parquet and runs the scripts. Below are those scripts' command
lines (the variables the quick start sets, the flag blocks and the ``torchrun`` line, written out here from
reading them); bash runs them with a recorder for ``torchrun`` (a stand-in for the launcher, nothing under
test), and the recorded command is launched (2 processes instead of NPUS_PER_NODE=8, from the user's folder)
with only the sizes made tiny: the model's shape, batch, sequence and iterations (``TINY``). Everything else
is MindSpeed's: ``--spec ... qwen3_spec layer_spec``, ``--reuse-fp32-param``, ``--use-ascend-coc`` (announced
once as not available here), ``--ckpt-format torch``, ``--enable-hf2mg-convert --model-type-hf qwen3``, the
handlers, ``--enable-thinking true``.
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from tests.e2e.pretrain_helpers import loss_strings
from tests.helpers.launch import StartedTorchrun
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow

# The quick start's settings of the scripts' variables (its "configuration example" for each script).
QUICKSTART_VARIABLES = """
NPUS_PER_NODE=8
MASTER_ADDR=localhost
MASTER_PORT=6000
NNODES=1
NODE_RANK=0
WORLD_SIZE=$(($NPUS_PER_NODE * $NNODES))
CKPT_SAVE_DIR="./ckpt/qwen3-8b"
DATA_PATH="./dataset/train-00000-of-00001-a09b74b3ef9c3b56.parquet"
TOKENIZER_PATH="./model_from_hf/qwen3_hf/"
CKPT_LOAD_DIR="./model_from_hf/qwen3_hf/"
"""

DISTRIBUTED = """
DISTRIBUTED_ARGS="
    --nproc_per_node $NPUS_PER_NODE --nnodes $NNODES --node_rank $NODE_RANK
    --master_addr $MASTER_ADDR --master_port $MASTER_PORT
"
"""

# examples/mcore/qwen3/pretrain_qwen3_8b_4K_ptd.sh (MindSpeed-LLM master): its settings and command line.
PRETRAIN = """
TP=1
PP=2
CP=1
MBS=1
GBS=64
SEQ_LENGTH=4096
TRAIN_ITERS=2000
OPTIMIZE_ARGS="
    --use-flash-attn --use-fused-rotary-pos-emb --use-rotary-position-embeddings --use-fused-swiglu
    --use-fused-rmsnorm --no-masked-softmax-fusion --use-distributed-optimizer --reuse-fp32-param
    --overlap-grad-reduce --overlap-param-gather --use-ascend-coc
"
TRAIN_ARGS="
    --micro-batch-size ${MBS} --global-batch-size ${GBS} --lr 1.25e-6 --lr-decay-style cosine --min-lr 1.25e-7
    --weight-decay 1e-1 --lr-warmup-fraction 0.01 --attention-dropout 0.0 --init-method-std 0.01
    --hidden-dropout 0.0 --clip-grad 1.0 --adam-beta1 0.9 --adam-beta2 0.95 --initial-loss-scale 4096
    --seed 42 --bf16 --train-iters ${TRAIN_ITERS} --seq-length ${SEQ_LENGTH}
"
MODEL_PARALLEL_ARGS="
    --tensor-model-parallel-size ${TP} --pipeline-model-parallel-size ${PP}
"
GPT_ARGS="
    --use-mcore-models --spec mindspeed_llm.tasks.models.spec.qwen3_spec layer_spec --qk-layernorm
    --tokenizer-name-or-path ${TOKENIZER_PATH} --max-position-embeddings ${SEQ_LENGTH} --num-layers 36
    --hidden-size 4096 --ffn-hidden-size 12288 --num-attention-heads 32 --tokenizer-type PretrainedFromHF
    --make-vocab-size-divisible-by 1 --padded-vocab-size 151936 --rotary-base 1000000
    --untie-embeddings-and-output-weights --disable-bias-linear --position-embedding-type rope
    --normalization RMSNorm --swiglu --attention-softmax-in-fp32 --no-gradient-accumulation-fusion
    --group-query-attention --num-query-groups 8 --norm-epsilon 1e-6 --ckpt-format torch
"
DATA_ARGS="
    --handler-name GeneralPretrainHandler --workers 4 --data-path $DATA_PATH --split 100,0,0
"
OUTPUT_ARGS="
    --log-interval 1 --save-interval ${TRAIN_ITERS} --eval-interval ${TRAIN_ITERS} --eval-iters 0
    --no-load-optim --no-load-rng
"
torchrun $DISTRIBUTED_ARGS pretrain_gpt.py \\
    $GPT_ARGS $DATA_ARGS $MOE_ARGS $OUTPUT_ARGS $OPTIMIZE_ARGS $TRAIN_ARGS $MODEL_PARALLEL_ARGS \\
    --load ${CKPT_LOAD_DIR} --save ${CKPT_SAVE_DIR} --distributed-backend nccl --transformer-impl local \\
    --enable-hf2mg-convert --model-type-hf qwen3 \\
    | tee logs/train_mcore_qwen3_8b.log
"""

# examples/mcore/qwen3/tune_qwen3_8b_4K_full_ptd.sh (MindSpeed-LLM master): its settings and command line.
TUNE = """
TP=1
PP=2
MBS=1
GBS=16
GPT_ARGS="
    --use-mcore-models --spec mindspeed_llm.tasks.models.spec.qwen3_spec layer_spec --kv-channels 128
    --qk-layernorm --tensor-model-parallel-size ${TP} --pipeline-model-parallel-size ${PP} --sequence-parallel
    --use-distributed-optimizer --use-flash-attn --num-layers 36 --hidden-size 4096
    --use-rotary-position-embeddings --num-attention-heads 32 --ffn-hidden-size 12288
    --max-position-embeddings 32768 --seq-length 4096 --make-vocab-size-divisible-by 1
    --padded-vocab-size 151936 --rotary-base 1000000 --micro-batch-size ${MBS} --global-batch-size ${GBS}
    --disable-bias-linear --train-iters 2000 --swiglu --tokenizer-type PretrainedFromHF
    --tokenizer-name-or-path ${TOKENIZER_PATH} --normalization RMSNorm --position-embedding-type rope
    --norm-epsilon 1e-6 --hidden-dropout 0 --attention-dropout 0 --no-gradient-accumulation-fusion
    --attention-softmax-in-fp32 --exit-on-missing-checkpoint --no-masked-softmax-fusion
    --group-query-attention --untie-embeddings-and-output-weights --num-query-groups 8 --min-lr 1.25e-7
    --lr 1.25e-6 --weight-decay 1e-1 --clip-grad 1.0 --adam-beta1 0.9 --adam-beta2 0.95
    --initial-loss-scale 4096 --no-load-optim --no-load-rng --seed 42 --bf16 --ckpt-format torch
"
DATA_ARGS="
    --handler-name AlpacaStyleInstructionHandler --enable-thinking true --prompt-type qwen3 --workers 4
    --data-path $DATA_PATH --split 100,0,0
"
CKPT_ARGS="
    --enable-hf2mg-convert --model-type-hf qwen3
"
OUTPUT_ARGS="
    --log-interval 1 --save-interval 1000 --eval-interval 1000 --eval-iters 0
"
TUNE_ARGS="
    --finetune --stage sft --is-instruction-dataset --prompt-type qwen3 --no-pad-to-seq-lengths
"
torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \\
    $GPT_ARGS $DATA_ARGS $OUTPUT_ARGS $TUNE_ARGS $CKPT_ARGS --distributed-backend nccl \\
    --load ${CKPT_LOAD_DIR} --save ${CKPT_SAVE_DIR} --transformer-impl local \\
    | tee logs/tune_qwen3_8b_full.log
"""

# The sizes made tiny (a tiny Qwen3 of the 8B's proportions: head_dim = hidden / heads, untied, GQA), and
# the iterations.
TINY = {
    "--num-layers": "2",
    "--hidden-size": "64",
    "--ffn-hidden-size": "96",
    "--num-attention-heads": "4",
    "--num-query-groups": "2",
    "--kv-channels": "16",
    "--padded-vocab-size": "128",
    "--global-batch-size": "4",
    "--train-iters": "2",
    "--save-interval": "2",
    "--eval-interval": "2",
    "--workers": "1",
}
SEQ = {"pretrain": "32", "tune": "64"}  # --seq-length and the pretrain script's --max-position-embeddings
SCRIPTS = {"pretrain": PRETRAIN, "tune": TUNE}


def recorded_command(script_text: str, cwd) -> list[str]:
    """The script's command line after bash expands it: what ``torchrun`` receives (from the script on)."""
    text = (
        'torchrun() { printf "%s\\n" "$@" > "$ARGS_OUT"; }\n'
        + QUICKSTART_VARIABLES
        + DISTRIBUTED
        + script_text
    )
    out = cwd / "recorded_args.txt"
    subprocess.run(
        ["bash", "-ec", text], check=True, cwd=cwd, env={**os.environ, "ARGS_OUT": str(out)}, timeout=60
    )
    words = [w for w in out.read_text().split("\n") if w]
    return words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]


def tiny(argv: list[str], name: str) -> list[str]:
    """``argv`` with the sizes made tiny (the flags' values replaced; nothing added or removed)."""
    sizes = {**TINY, "--seq-length": SEQ[name]}
    if name == "pretrain":  # its --max-position-embeddings is ${SEQ_LENGTH}
        sizes["--max-position-embeddings"] = SEQ[name]
    out = [sizes.get(argv[i - 1], w) if i else w for i, w in enumerate(argv)]
    assert [w for w in out if w.startswith("--")] == [w for w in argv if w.startswith("--")]
    return out


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The user's folders (model_from_hf/qwen3_hf: a tiny Qwen3; dataset/: the alpaca parquet); both run."""
    import pandas as pd

    from tests.helpers.tiny import make_hf_model, save_word_tokenizer

    root = tmp_path_factory.mktemp("mindspeed_quickstart")
    hf = make_hf_model(root / "model_from_hf" / "qwen3_hf", "qwen3", num_layers=2, head_dim=16)
    save_word_tokenizer(hf, 126, ("<|im_start|>", "<|im_end|>"))
    rng = random.Random(0)

    def words(n):
        return " ".join(f"w{rng.randrange(3, 126)}" for _ in range(n))

    rows = []
    for _ in range(32):
        row = {
            "instruction": words(rng.randrange(3, 9)),
            "input": words(rng.randrange(0, 4)),
            "output": words(rng.randrange(3, 12)),
        }
        row["text"] = " ".join(row.values())  # tatsu-lab/alpaca's parquet has the text column too
        rows.append(row)
    (root / "dataset").mkdir()
    pd.DataFrame(rows).to_parquet(root / "dataset" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet")
    (root / "logs").mkdir()
    argvs = {name: tiny(recorded_command(text, root), name) for name, text in SCRIPTS.items()}
    runs = {}
    for name, argv in argvs.items():  # one after the other: the tune run reuses the converted checkpoint
        launched = StartedTorchrun(REPO_ROOT / argv[0], *argv[1:], nproc=2, timeout=300, cwd=root)
        runs[name] = launched.result().stdout
    return root, argvs, runs


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_mindspeed_quickstart_commands_run_as_written(quickstart, name):
    from mindspeed_llm.runtime.checkpoint.layout import read_tracker

    root, argvs, runs = quickstart
    argv, out = argvs[name], runs[name]
    # MindSpeed's own flags are all on the command line that ran.
    joined = " ".join(argv)
    for flag in ("--spec mindspeed_llm.tasks.models.spec.qwen3_spec layer_spec", "--enable-hf2mg-convert",
                 "--model-type-hf qwen3", "--ckpt-format torch", "--no-masked-softmax-fusion"):
        assert flag in joined
    assert argv[argv.index("--load") + 1] == "./model_from_hf/qwen3_hf/"
    assert argv[argv.index("--data-path") + 1].endswith(".parquet")
    steps = loss_strings(out)
    # A converted checkpoint continues at iteration 2 (MindSpeed's pretraining); --finetune starts at 1.
    assert sorted(steps) == ([2] if name == "pretrain" else [1, 2])
    assert all(0 < float(v) < 10 for v in steps.values())
    assert read_tracker(root / "ckpt" / "qwen3-8b") == 2
    cache = "HF -> Megatron checkpoint: " + ("building" if name == "pretrain" else "reusing")
    assert f"{cache} " in out and "model_from_hf/qwen3_hf/megatron_cache_tp1pp2ep1" in out
    assert "preprocessed train-00000-of-00001-a09b74b3ef9c3b56.parquet: building" in out
    if name == "pretrain":  # the device fallbacks, said once, in one line naming both flags
        notes = [line for line in out.splitlines() if "--reuse-fp32-param" in line]
        assert len(notes) == 1 and "--use-ascend-coc" in notes[0] and "not available on cpu" in notes[0]
