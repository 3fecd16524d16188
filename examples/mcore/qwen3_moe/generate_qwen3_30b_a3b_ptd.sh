#!/usr/bin/env bash
# Qwen3-30B-A3B (Qwen3-MoE): generate from the checkpoint training wrote (inference.py, docs/inference.md).
# Launch with the training layout, TP1 PP2 EP8 on 16 processes (2 nodes x 8, NNODES and NODE_RANK set on each): a legacy
# checkpoint loads at the TP/PP/EP it was saved with. For one node, re-lay it first, e.g. convert_ckpt.py mg -> mg
# --target-pipeline-parallel-size 8 --target-expert-parallel-size 1, then PP=8 EP=1 NNODES=1 (docs/moe.md).
# Every variable below can be overridden from the environment, e.g.
#   PROMPT="Give three tips for staying healthy." bash examples/mcore/qwen3_moe/generate_qwen3_30b_a3b_ptd.sh
#   TASK=chat PROMPT_TYPE=qwen3 bash examples/mcore/qwen3_moe/generate_qwen3_30b_a3b_ptd.sh     # a conversation through the SFT template (stdin)
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

TP=${TP:-1}
PP=${PP:-2}
EP=${EP:-8}
NNODES=${NNODES:-2}
NPUS_PER_NODE=${NPUS_PER_NODE:-$((TP * PP * EP / NNODES))}  # one process per model shard (TP x PP x EP)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NODE_RANK=${NODE_RANK:-0}

# please fill these path configurations
CHECKPOINT=${CHECKPOINT:-"./ckpt/qwen3-30b-a3b/"}   # pretrain_qwen3_30b_a3b_4K_ptd.sh's --save
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen3-30b-a3b-hf/"}
PROMPT=${PROMPT:-"Give three tips for staying healthy."}
TASK=${TASK:-greedy}                 # greedy, do_sample (--temperature/--top-k/--top-p), chat
PROMPT_TYPE=${PROMPT_TYPE:-qwen3}
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
    --expert-model-parallel-size ${EP} \
    --qk-layernorm \
    --kv-channels 128 \
    --num-layers 48 \
    --hidden-size 2048 \
    --ffn-hidden-size 6144 \
    --num-attention-heads 32 \
    --group-query-attention \
    --num-query-groups 4 \
    --max-position-embeddings 40960 \
    --seq-length 4096 \
    --untie-embeddings-and-output-weights \
    --rotary-base 1000000 \
    --norm-epsilon 1e-6 \
    --padded-vocab-size 151936 \
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

# The experts as in pretrain_qwen3_30b_a3b_4K_ptd.sh (and its layout: EP ranks each hold 16 of the 128 experts).
MOE_ARGS="
    --num-experts 128 \
    --moe-router-topk 8 \
    --moe-ffn-hidden-size 768 \
    --norm-topk-prob \
    --moe-layer-freq 1 \
    --moe-grouped-gemm \
    --moe-token-dispatcher-type alltoall
"

if [ "$TASK" = "chat" ]; then
    TASK_ARGS=(--task chat --prompt-type "$PROMPT_TYPE")   # user turns from stdin (or add --prompt TEXT ...)
else
    TASK_ARGS=(--task "$TASK" --prompt "$PROMPT")
fi

torchrun $DISTRIBUTED_ARGS inference.py \
    $MODEL_ARGS \
    $MOE_ARGS \
    --load ${CHECKPOINT} \
    --max-new-tokens ${MAX_NEW_TOKENS} \
    "${TASK_ARGS[@]}" \
    2>&1 | tee "$LOG_DIR/generate_mcore_qwen3_30b_a3b.log"
exit "${PIPESTATUS[0]}"
