#!/usr/bin/env bash
# Qwen2.5-7B pretraining at 128K with YaRN (factor 4 over its 32K window), bf16, TP1 PP4 CP2 (8 processes).
# Pretrain with torchrun (single node, or multi node: run it on every node with NNODES and NODE_RANK set).
# Every variable below can be overridden from the environment, e.g. `CP_ALGO=ulysses_cp_algo bash examples/mcore/qwen25/pretrain_qwen25_7b_128k_yarn_ptd.sh`.
# Inputs: a checkpoint from ckpt_convert_qwen25_7b_128k_yarn_hf2mcore.sh (its config.json carries the YaRN
# rope_scaling: the flags below must match it) and data from data_convert_qwen25_pretrain.sh.
# Context parallelism splits each 128K sequence over CP ranks (TP x PP x CP processes per model replica):
# CP_ALGO=megatron_cp_algo (ring attention), ulysses_cp_algo (all-to-all; 28 heads / TP must divide by CP) or
# hybrid_cp_algo (ULYSSES-way all-to-all inside CP / ULYSSES ring ranks), e.g. `CP=4 CP_ALGO=hybrid_cp_algo
# ULYSSES=2 PP=2`. RoPE (YaRN's frequencies and attention factor, as transformers computes them) is cut per CP
# rank as the sequence is.
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/qwen2.5-7b-128k_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen2.5-7b-128k/"}
DATA_PATH=${DATA_PATH:-"./dataset/alpaca_text_document"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen2.5-7b-hf/"}

TP=${TP:-1}
PP=${PP:-4}
CP=${CP:-2}
CP_ALGO=${CP_ALGO:-megatron_cp_algo}
ULYSSES=${ULYSSES:-2}                  # hybrid_cp_algo only: Ulysses ranks per ring rank (divides CP, 1 < U < CP)
SEQ_LEN=${SEQ_LEN:-131072}
MBS=${MBS:-1}
GBS=${GBS:-32}
TRAIN_ITERS=${TRAIN_ITERS:-2000}
LOG_DIR=${LOG_DIR:-./logs}

# torchrun's agent binds MASTER_PORT before our code runs: say which process holds a busy port.
if [ "$NODE_RANK" = "0" ]; then
    python mindspeed_llm/runtime/port_check.py "$MASTER_PORT"  # a plain file: no torch import
fi
mkdir -p "$LOG_DIR"

HYBRID_ARGS=""
if [ "$CP_ALGO" = "hybrid_cp_algo" ]; then
    HYBRID_ARGS="--ulysses-degree-in-cp ${ULYSSES}"
fi

DISTRIBUTED_ARGS="
    --nproc_per_node $NPUS_PER_NODE \
    --nnodes $NNODES \
    --node_rank $NODE_RANK \
    --master_addr $MASTER_ADDR \
    --master_port $MASTER_PORT
"

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --context-parallel-size ${CP} \
    --context-parallel-algo ${CP_ALGO} \
    ${HYBRID_ARGS} \
    --sequence-parallel \
    --recompute-granularity full \
    --recompute-method uniform \
    --recompute-num-layers 1 \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --num-layers 28 \
    --hidden-size 3584 \
    --ffn-hidden-size 18944 \
    --num-attention-heads 28 \
    --group-query-attention \
    --num-query-groups 4 \
    --max-position-embeddings 131072 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --add-qkv-bias \
    --untie-embeddings-and-output-weights \
    --position-embedding-type rope \
    --rotary-base 1000000 \
    --rope-scaling-type yarn \
    --rope-scaling-factor 4 \
    --rope-scaling-original-max-position-embeddings 32768 \
    --normalization RMSNorm \
    --norm-epsilon 1e-06 \
    --swiglu \
    --make-vocab-size-divisible-by 1 \
    --padded-vocab-size 152064 \
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
    --save-interval 1000 \
    --eval-interval 1000 \
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
    2>&1 | tee "$LOG_DIR/train_mcore_qwen25_7b_128k_yarn.log"
exit "${PIPESTATUS[0]}"
