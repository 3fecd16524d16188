#!/usr/bin/env bash
# Phi-3.5-mini pretraining, 4K sequence (LongRoPE's short factors: within the original 4096 window), bf16, TP1 PP8.
# Pretrain with torchrun (single node, or multi node: run it on every node with NNODES and NODE_RANK set).
# Every variable below can be overridden from the environment, e.g. `TP=2 PP=4 bash examples/mcore/phi35/pretrain_phi35_mini_ptd.sh`.
# Inputs: a checkpoint from ckpt_convert_phi35_mini_hf2mcore.sh and data from preprocess_data.py with its tokenizer.
# Longer sequences (SEQ_LEN above 4096, up to 131072) switch to LongRoPE's long factors as transformers does;
# add --context-parallel-size for them. The factor lists come from the checkpoint (--long-factor / --short-factor
# may repeat them; different values are refused).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/phi35-mini_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/phi35-mini/"}
DATA_PATH=${DATA_PATH:-"./dataset/phi35_alpaca_text_document"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/phi35-mini-hf/"}

TP=${TP:-1}
PP=${PP:-8}
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
    --kv-channels 96 \
    --num-layers 32 \
    --hidden-size 3072 \
    --ffn-hidden-size 8192 \
    --num-attention-heads 32 \
    --max-position-embeddings 131072 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --position-embedding-type rope \
    --use-rotary-position-embeddings \
    --rotary-base 10000 \
    --rope-scaling-type longrope \
    --rope-scaling-original-max-position-embeddings 4096 \
    --normalization RMSNorm \
    --norm-epsilon 1e-5 \
    --swiglu \
    --untie-embeddings-and-output-weights \
    --make-vocab-size-divisible-by 1 \
    --padded-vocab-size 32064 \
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
    2>&1 | tee "$LOG_DIR/train_mcore_phi35_mini_4K.log"
exit "${PIPESTATUS[0]}"
