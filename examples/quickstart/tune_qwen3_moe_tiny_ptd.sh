#!/usr/bin/env bash
# Quick start step 8 (MODEL=qwen3-moe): fine-tune the pretrained tiny Qwen3-MoE on the instruction data (SFT) with
# torchrun at TP1 PP1 EP2 (the layout it was pretrained in), shaped like
# examples/mcore/qwen3_moe/tune_qwen3_30b_a3b_4K_full_ptd.sh (same variables, same flags, tiny sizes). The padding
# and the -100 prompt tokens are left out of the router's load-balancing loss (docs/moe.md, "Router losses").
set -euo pipefail

NPUS_PER_NODE=${NPUS_PER_NODE:-2}      # processes per node (NPUs, GPUs or, here, CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

QS_OUT=${QS_OUT:-./quickstart_output}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-$QS_OUT/ckpt/qwen3_moe_tiny_pretrain/}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-$QS_OUT/ckpt/qwen3_moe_tiny_sft/}
DATA_PATH=${DATA_PATH:-$QS_OUT/finetune_dataset/alpaca}
TOKENIZER_PATH=${TOKENIZER_PATH:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf/}

TP=${TP:-1}
PP=${PP:-1}
EP=${EP:-2}
SEQ_LEN=${SEQ_LEN:-128}
MBS=${MBS:-1}
GBS=${GBS:-4}
TRAIN_ITERS=${SFT_ITERS:-10}  # SFT_ITERS: the pretraining step reads TRAIN_ITERS
LR=${LR:-3e-3}          # peak, after the warmup; cosine decay to MIN_LR
MIN_LR=${MIN_LR:-3e-4}
LOG_INTERVAL=${LOG_INTERVAL:-5}
LOG_DIR=${LOG_DIR:-$QS_OUT/logs}

# torchrun's agent binds MASTER_PORT before any of our code runs: name the holder of a busy port.
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

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --expert-model-parallel-size ${EP} \
    --sequence-parallel \
    --use-distributed-optimizer \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --num-layers 4 \
    --hidden-size 128 \
    --ffn-hidden-size 384 \
    --num-attention-heads 4 \
    --max-position-embeddings 40960 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --qk-layernorm \
    --kv-channels 64 \
    --group-query-attention \
    --num-query-groups 2 \
    --position-embedding-type rope \
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
    --lr ${LR} \
    --min-lr ${MIN_LR} \
    --lr-decay-style cosine \
    --lr-warmup-fraction 0.1 \
    --weight-decay 0.01 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --init-method-std 0.02 \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --no-gradient-accumulation-fusion \
    --no-masked-softmax-fusion \
    --attention-softmax-in-fp32 \
    --seed 1234 \
    --bf16
"

# Qwen3-MoE's experts, as the pretraining script gives them.
MOE_ARGS="
    --num-experts 8 \
    --moe-router-topk 2 \
    --moe-ffn-hidden-size 96 \
    --norm-topk-prob \
    --moe-grouped-gemm \
    --moe-token-dispatcher-type alltoall \
    --moe-router-load-balancing-type aux_loss \
    --moe-aux-loss-coeff 0.001
"

DATA_ARGS="
    --data-path $DATA_PATH \
    --split 100,0,0
"

OUTPUT_ARGS="
    --log-interval ${LOG_INTERVAL} \
    --save-interval ${TRAIN_ITERS} \
    --eval-interval ${TRAIN_ITERS} \
    --eval-iters 0
"

# --finetune: the pretrained weights only, from iteration 0; --stage sft: DATA_PATH is instruction data.
TUNE_ARGS="
    --finetune \
    --stage sft \
    --is-instruction-dataset \
    --prompt-type qwen3 \
    --no-pad-to-seq-lengths
"

torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \
    $GPT_ARGS \
    $MOE_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    $TUNE_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/tune_mcore_qwen3_moe_tiny.log"
exit "${PIPESTATUS[0]}"
