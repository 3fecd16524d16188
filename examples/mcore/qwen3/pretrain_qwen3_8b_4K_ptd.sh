#!/usr/bin/env bash
# Qwen3-8B pretraining, 4K sequence, bf16 (untied embeddings), TP1 PP2.
# Pretrain with torchrun (single node, or multi node: run it on every node with NNODES and NODE_RANK set).
# Every variable below can be overridden from the environment, e.g. `TP=2 PP=2 bash examples/mcore/qwen3/pretrain_qwen3_8b_4K_ptd.sh`.
# Inputs, as MindSpeed-LLM's quick start gives them: CKPT_LOAD_DIR the HF folder itself (config.json + *.safetensors:
# converted once at start-up into CKPT_LOAD_DIR/megatron_cache_tp1pp2ep1, and an HF copy of each save written to
# CKPT_SAVE_DIR/mg2hf_iteration<N>) and DATA_PATH a raw file (parquet, jsonl, json, csv, txt, arrow: preprocessed
# once with --handler-name next to it); or, offline, a checkpoint from ckpt_convert_qwen3_8b_hf2mcore.sh and a
# prefix from data_convert_qwen3_pretrain.sh (docs/train_from_hf.md).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/qwen3-8b_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen3-8b/"}
DATA_PATH=${DATA_PATH:-"./dataset/alpaca_text_document"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen3-8b-hf/"}

TP=${TP:-1}
PP=${PP:-2}
SEQ_LEN=${SEQ_LEN:-4096}
MBS=${MBS:-1}
GBS=${GBS:-64}
TRAIN_ITERS=${TRAIN_ITERS:-2000}
LOG_DIR=${LOG_DIR:-./logs}

# torchrun's agent binds MASTER_PORT before our code runs: say which process holds a busy port.
if [ "$NODE_RANK" = "0" ]; then
    python mindspeed_llm/runtime/port_check.py "$MASTER_PORT"  # a plain file: no torch import
fi
mkdir -p "$LOG_DIR"

DISTRIBUTED_ARGS="
    --nproc_per_node $NPUS_PER_NODE \
    --nnodes $NNODES \
    --node_rank $NODE_RANK \
    --master_addr $MASTER_ADDR \
    --master_port $MASTER_PORT
"

# --qk-layernorm and --kv-channels 128: Qwen3's per-head q/k RMSNorms and head_dim (config.json's head_dim).
GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --qk-layernorm \
    --kv-channels 128 \
    --num-layers 36 \
    --hidden-size 4096 \
    --ffn-hidden-size 12288 \
    --num-attention-heads 32 \
    --group-query-attention \
    --num-query-groups 8 \
    --max-position-embeddings 40960 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --position-embedding-type rope \
    --use-rotary-position-embeddings \
    --rotary-base 1000000 \
    --normalization RMSNorm \
    --norm-epsilon 1e-6 \
    --swiglu \
    --untie-embeddings-and-output-weights \
    --make-vocab-size-divisible-by 1 \
    --padded-vocab-size 151936 \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path ${TOKENIZER_PATH} \
    --micro-batch-size ${MBS} \
    --global-batch-size ${GBS} \
    --train-iters ${TRAIN_ITERS} \
    --lr 1.25e-6 \
    --min-lr 1.25e-7 \
    --lr-decay-style cosine \
    --lr-warmup-fraction 0.01 \
    --weight-decay 1e-1 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --init-method-std 0.01 \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --attention-softmax-in-fp32 \
    --no-gradient-accumulation-fusion \
    --no-masked-softmax-fusion \
    --initial-loss-scale 4096 \
    --seed 42 \
    --bf16
"

DATA_ARGS="
    --handler-name GeneralPretrainHandler \
    --workers 4 \
    --data-path $DATA_PATH \
    --split 100,0,0
"

# A converted checkpoint (iteration 1, weights only) continues at iteration 2 with a fresh optimizer
# (--no-load-optim --no-load-rng); use --finetune instead to start counting at iteration 0.
OUTPUT_ARGS="
    --log-interval 1 \
    --log-throughput \
    --save-interval ${TRAIN_ITERS} \
    --eval-interval ${TRAIN_ITERS} \
    --eval-iters 0 \
    --no-load-optim \
    --no-load-rng
"

torchrun $DISTRIBUTED_ARGS pretrain_gpt.py \
    $GPT_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/train_mcore_qwen3_8b_4K.log"
exit "${PIPESTATUS[0]}"
