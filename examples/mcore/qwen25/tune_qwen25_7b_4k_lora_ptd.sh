#!/usr/bin/env bash
# Qwen2.5-7B LoRA instruction fine-tuning (SFT), 4K sequence, bf16, TP1 PP4 (docs/lora.md): adapters r=8
# alpha=16 on every linear layer, the base weights frozen; --save holds only the adapter (--lora-ckpt-filter).
# --load is the base (weights only); --lora-load is the save folder: the first launch starts a new adapter at
# iteration 0, a relaunch resumes it (adapter, optimizer, scheduler, iteration).
# Every variable below can be overridden from the environment, e.g. `TP=2 PP=2 bash examples/mcore/qwen25/tune_qwen25_7b_4k_lora_ptd.sh`
# (the base checkpoint must then be converted at that TP/PP).
# Inputs: a checkpoint from ckpt_convert_qwen25_hf2mcore.sh and instruction data from data_convert_qwen25_instruction.sh
# (--prompt-type qwen). Export (merged HF weights or a peft adapter): ckpt_convert_qwen25_mcore2hf_lora.sh.
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
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen2.5-7b-lora/"}
DATA_PATH=${DATA_PATH:-"./finetune_dataset/alpaca"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen2.5-7b-hf/"}

TP=${TP:-1}
PP=${PP:-4}
SEQ_LEN=${SEQ_LEN:-4096}
MBS=${MBS:-1}
GBS=${GBS:-32}
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
    --lr 1e-4 \
    --min-lr 1e-5 \
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
    --save-interval 500 \
    --eval-interval ${TRAIN_ITERS} \
    --eval-iters 0
"

# LoRA: no --finetune: --load is read as weights only, and --lora-load decides where the run starts (a new
# adapter at iteration 0, or the saved one resumed).
LORA_ARGS="
    --lora-r 8 \
    --lora-alpha 16 \
    --lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 \
    --lora-ckpt-filter \
    --lora-load ${CKPT_SAVE_DIR}
"

# MindSpeed-LLM's fine-tuning flags: --stage sft reads DATA_PATH as instruction data
# (PREFIX_packed_{input_ids,attention_mask,labels}_document); --no-pad-to-seq-lengths pads each micro-batch only
# to its longest sample. For packed data (data_convert_* with --pack --neat-pack) use --reset-attention-mask
# instead of --no-pad-to-seq-lengths.
TUNE_ARGS="
    --stage sft \
    --is-instruction-dataset \
    --prompt-type qwen \
    --no-pad-to-seq-lengths
"

torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \
    $GPT_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    $TUNE_ARGS \
    $LORA_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/tune_mcore_qwen25_7b_4k_lora.log"
exit "${PIPESTATUS[0]}"
