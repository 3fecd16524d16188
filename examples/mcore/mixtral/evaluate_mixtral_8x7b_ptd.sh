#!/usr/bin/env bash
# Mixtral-8x7B: evaluate the checkpoint training wrote (evaluation.py, docs/evaluation.md): MMLU 5-shot
# from its release files, scored by the log-likelihood of each answer letter; a table per subject and overall.
# Launch with the training layout, TP1 PP4 EP8 on 32 processes (4 nodes x 8, NNODES and NODE_RANK set on each): a
# legacy checkpoint loads at the TP/PP/EP it was saved with (re-lay it with convert_ckpt.py mg -> mg for another).
# Every variable below can be overridden from the environment, e.g.
#   TASK="mmlu ceval" DATA_PATH="./mmlu/data ./ceval" bash examples/mcore/mixtral/evaluate_mixtral_8x7b_ptd.sh
#   LM_EVAL_TASKS=arc_easy,hellaswag TASK= bash examples/mcore/mixtral/evaluate_mixtral_8x7b_ptd.sh      # lm-evaluation-harness tasks instead
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

TP=${TP:-1}
PP=${PP:-4}
EP=${EP:-8}
NNODES=${NNODES:-4}
NPUS_PER_NODE=${NPUS_PER_NODE:-$((TP * PP * EP / NNODES))}  # one process per model shard (TP x PP x EP)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NODE_RANK=${NODE_RANK:-0}

# please fill these path configurations
CHECKPOINT=${CHECKPOINT:-"./ckpt/mixtral-8x7b/"}   # pretrain_mixtral_8x7b_4K_ptd.sh's --save
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/mixtral-8x7b-hf/"}
TASK=${TASK-mmlu}                    # mmlu cmmlu ceval boolq gsm8k bbh agieval (several: one DATA_PATH each)
DATA_PATH=${DATA_PATH-"./mmlu/data"}     # the MMLU release's data/ folder (dev/ and test/)
LM_EVAL_TASKS=${LM_EVAL_TASKS:-}         # lm-eval task names, comma-separated (their own datasets)
OUTPUT_PATH=${OUTPUT_PATH:-"./eval_results/mixtral_8x7b"}
BATCH_SIZE=${BATCH_SIZE:-8}
PROMPT_TYPE=${PROMPT_TYPE:-}                # e.g. mistral for an instruction-tuned checkpoint (the SFT template)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-256}    # generation tasks (gsm8k, bbh)
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
    --num-layers 32 \
    --hidden-size 4096 \
    --ffn-hidden-size 14336 \
    --num-attention-heads 32 \
    --group-query-attention \
    --num-query-groups 8 \
    --max-position-embeddings 32768 \
    --seq-length 4096 \
    --untie-embeddings-and-output-weights \
    --rotary-base 1000000 \
    --norm-epsilon 1e-5 \
    --padded-vocab-size 32000 \
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

# The experts as in pretrain_mixtral_8x7b_4K_ptd.sh (and its layout: EP ranks each hold one of the 8 experts).
MOE_ARGS="
    --num-experts 8 \
    --moe-router-topk 2 \
    --moe-ffn-hidden-size 14336 \
    --norm-topk-prob \
    --moe-layer-freq 1 \
    --moe-grouped-gemm \
    --moe-token-dispatcher-type alltoall
"

TASK_ARGS=()
if [ -n "$TASK" ]; then
    TASK_ARGS+=(--task $TASK --task-data-path $DATA_PATH)
fi
if [ -n "$LM_EVAL_TASKS" ]; then
    TASK_ARGS+=(--lm-eval-tasks "$LM_EVAL_TASKS")
fi
if [ -n "$PROMPT_TYPE" ]; then
    TASK_ARGS+=(--prompt-type "$PROMPT_TYPE")
fi

torchrun $DISTRIBUTED_ARGS evaluation.py \
    $MODEL_ARGS \
    $MOE_ARGS \
    --load ${CHECKPOINT} \
    --max-new-tokens ${MAX_NEW_TOKENS} \
    --evaluation-batch-size ${BATCH_SIZE} \
    --output-path ${OUTPUT_PATH} \
    "${TASK_ARGS[@]}" \
    2>&1 | tee "$LOG_DIR/evaluate_mcore_mixtral_8x7b.log"
exit "${PIPESTATUS[0]}"
