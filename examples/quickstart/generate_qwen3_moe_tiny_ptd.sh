#!/usr/bin/env bash
# Quick start step 10 (MODEL=qwen3-moe): chat with the fine-tuned tiny Qwen3-MoE through inference.py (torchrun,
# TP1 PP1 EP2, as trained), shaped like examples/mcore/qwen3_moe/generate_qwen3_30b_a3b_ptd.sh (same variables,
# same flags, tiny sizes).
# The model flags are the tune script's; fp32 (no --bf16): the weights trained in bf16 are computed in fp32.
set -euo pipefail

NPUS_PER_NODE=${NPUS_PER_NODE:-2}      # processes per node: one per model shard (TP x PP x EP)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}

QS_OUT=${QS_OUT:-./quickstart_output}
CHECKPOINT=${CHECKPOINT:-$QS_OUT/ckpt/qwen3_moe_tiny_sft/}   # tune_qwen3_moe_tiny_ptd.sh's --save
TOKENIZER_PATH=${TOKENIZER_PATH:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf/}
PROMPT=${PROMPT:-"Explain what \`json.dumps\` does in Python."}
TASK=${TASK:-chat}                   # chat (through PROMPT_TYPE's template), greedy, do_sample
PROMPT_TYPE=${PROMPT_TYPE:-qwen3}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48}
LOG_DIR=${LOG_DIR:-$QS_OUT/logs}

TP=${TP:-1}
PP=${PP:-1}
EP=${EP:-2}

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
    --expert-model-parallel-size ${EP} \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --num-layers 4 \
    --hidden-size 128 \
    --ffn-hidden-size 384 \
    --num-attention-heads 4 \
    --max-position-embeddings 40960 \
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
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path ${TOKENIZER_PATH} \
    --seed 1234
"

MOE_ARGS="
    --num-experts 8 \
    --moe-router-topk 2 \
    --moe-ffn-hidden-size 96 \
    --norm-topk-prob \
    --moe-grouped-gemm \
    --moe-token-dispatcher-type alltoall
"

if [ "$TASK" = "chat" ]; then
    TASK_ARGS=(--task chat --prompt-type "$PROMPT_TYPE" --prompt "$PROMPT")
else
    TASK_ARGS=(--task "$TASK" --prompt "$PROMPT")
fi

torchrun $DISTRIBUTED_ARGS inference.py \
    $MODEL_ARGS \
    $MOE_ARGS \
    --load ${CHECKPOINT} \
    --max-new-tokens ${MAX_NEW_TOKENS} \
    "${TASK_ARGS[@]}" \
    2>&1 | tee "$LOG_DIR/generate_mcore_qwen3_moe_tiny.log"
exit "${PIPESTATUS[0]}"
