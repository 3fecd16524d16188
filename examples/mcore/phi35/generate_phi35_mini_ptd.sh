#!/usr/bin/env bash
# Phi-3.5-mini: generate from the checkpoint training wrote (inference.py, docs/inference.md).
# Launch with the training layout: a legacy checkpoint loads at the TP/PP it was saved with (torch_dist: any).
# Every variable below can be overridden from the environment, e.g.
#   PROMPT="Give three tips for staying healthy." bash examples/mcore/phi35/generate_phi35_mini_ptd.sh
# While the prompt plus MAX_NEW_TOKENS fits the original 4096 window LongRoPE's short factors apply, as in
# transformers' generate; longer generations use the long factors throughout (docs/training.md, Long context).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

TP=${TP:-1}
PP=${PP:-8}
NPUS_PER_NODE=${NPUS_PER_NODE:-$((TP * PP))}  # one process per model shard
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}

# please fill these path configurations
CHECKPOINT=${CHECKPOINT:-"./ckpt/phi35-mini/"}   # pretrain_phi35_mini_ptd.sh's --save
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/phi35-mini-hf/"}
PROMPT=${PROMPT:-"Give three tips for staying healthy."}
TASK=${TASK:-greedy}                 # greedy, do_sample (--temperature/--top-k/--top-p), chat
PROMPT_TYPE=${PROMPT_TYPE:-empty}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-256}
LOG_DIR=${LOG_DIR:-./logs}

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

MODEL_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --kv-channels 96 \
    --num-layers 32 \
    --hidden-size 3072 \
    --ffn-hidden-size 8192 \
    --num-attention-heads 32 \
    --max-position-embeddings 131072 \
    --seq-length 4096 \
    --untie-embeddings-and-output-weights \
    --rotary-base 10000 \
    --rope-scaling-type longrope \
    --rope-scaling-original-max-position-embeddings 4096 \
    --norm-epsilon 1e-5 \
    --padded-vocab-size 32064 \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --position-embedding-type rope \
    --normalization RMSNorm \
    --swiglu \
    --disable-bias-linear \
    --make-vocab-size-divisible-by 1 \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --attention-softmax-in-fp32 \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path ${TOKENIZER_PATH} \
    --seed 42 \
    --bf16
"

if [ "$TASK" = "chat" ]; then
    TASK_ARGS=(--task chat --prompt-type "$PROMPT_TYPE")   # user turns from stdin (or add --prompt TEXT ...)
else
    TASK_ARGS=(--task "$TASK" --prompt "$PROMPT")
fi

torchrun $DISTRIBUTED_ARGS inference.py \
    $MODEL_ARGS \
    --load ${CHECKPOINT} \
    --max-new-tokens ${MAX_NEW_TOKENS} \
    "${TASK_ARGS[@]}" \
    2>&1 | tee "$LOG_DIR/generate_mcore_phi35_mini.log"
exit "${PIPESTATUS[0]}"
