#!/usr/bin/env bash
# Qwen2.5-7B DPO (preference alignment, sigmoid loss, beta 0.1) after SFT, 4K sequence, bf16.
# Every variable below can be overridden from the environment, e.g. `TP=2 PP=2 bash examples/mcore/qwen25/dpo_qwen25_7b_4k_ptd.sh`.
# Inputs: a checkpoint (the SFT run's --save, or ckpt_convert_*_hf2mcore.sh's) and pairwise data from
# data_convert_*_pairwise.sh (--prompt-type qwen). The reference model is the starting weights (--load):
# a second frozen copy is held beside the policy; add --lora-target-modules ... for LoRA DPO (one copy, the
# reference is the base with the adapters off). Convert the result back with ckpt_convert_*_mcore2hf.sh.
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/qwen2.5_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen2.5-7b-dpo/"}
DATA_PATH=${DATA_PATH:-"./pairwise_dataset/orca_rlhf_qwen25"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen2.5-7b-hf/"}

TP=${TP:-1}
PP=${PP:-4}
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

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --sequence-parallel \
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
    --max-position-embeddings 32768 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --add-qkv-bias \
    --untie-embeddings-and-output-weights \
    --position-embedding-type rope \
    --rotary-base 1000000 \
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
    --lr 5e-7 \
    --min-lr 0 \
    --lr-decay-style cosine \
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

OUTPUT_ARGS="
    --log-interval 1 \
    --save-interval ${TRAIN_ITERS} \
    --eval-interval ${TRAIN_ITERS} \
    --eval-iters 0
"

# MindSpeed-LLM's DPO flags: --finetune loads the weights only and starts at iteration 0 (they are also the
# reference); --stage dpo --is-pairwise-dataset reads DATA_PATH as the four pairwise datasets; each micro-batch
# runs its chosen and rejected answers together through the policy and the reference. --dpo-loss-type hinge|ipo,
# --pref-ftx (an SFT term on the chosen answers), --ref-model CKPT (another reference); --stage simpo|orpo train
# without a reference model.
TUNE_ARGS="
    --finetune \
    --stage dpo \
    --is-pairwise-dataset \
    --dpo-loss-type sigmoid \
    --dpo-beta 0.1 \
    --prompt-type qwen \
    --no-pad-to-seq-lengths
"

torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \
    $GPT_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    $TUNE_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/dpo_mcore_qwen25_7b_4k.log"
exit "${PIPESTATUS[0]}"
