#!/usr/bin/env bash
# Qwen3-8B full-parameter instruction fine-tuning (SFT) at 128K with YaRN, packed samples, bf16, TP1 PP2 CP4.
# Fine-tune with torchrun (single node, or multi node: run it on every node with NNODES and NODE_RANK set).
# Every variable below can be overridden from the environment, e.g. `CP_ALGO=ulysses_cp_algo bash examples/mcore/qwen3/tune_qwen3_8b_128K_yarn_full_pack_ptd.sh`.
# Inputs: a checkpoint from ckpt_convert_qwen3_8b_128K_yarn_hf2mcore.sh and instruction data packed to 128K
# (data_convert_qwen3_instruction.sh with --pack --neat-pack --seq-length 131072, output prefix alpaca_128k).
# Each pack is one 131072-token row (--reset-attention-mask: every sample attends only within itself, its RoPE
# positions restarting); context parallelism splits the row over CP ranks (ring or Ulysses, CP_ALGO).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/qwen3-8b-128k_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen3-8b-128k-sft/"}
DATA_PATH=${DATA_PATH:-"./finetune_dataset/alpaca_128k"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen3-8b-hf/"}

TP=${TP:-1}
PP=${PP:-2}
CP=${CP:-4}
CP_ALGO=${CP_ALGO:-megatron_cp_algo}
SEQ_LEN=${SEQ_LEN:-131072}
MBS=${MBS:-1}
GBS=${GBS:-16}
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
    --context-parallel-size ${CP} \
    --context-parallel-algo ${CP_ALGO} \
    --recompute-granularity full \
    --recompute-method uniform \
    --recompute-num-layers 1 \
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
    --max-position-embeddings 131072 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --position-embedding-type rope \
    --use-rotary-position-embeddings \
    --rotary-base 1000000 \
    --rope-scaling-type yarn \
    --rope-scaling-factor 4 \
    --rope-scaling-original-max-position-embeddings 32768 \
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

# MindSpeed-LLM's fine-tuning flags: --finetune loads the converted weights only and starts at iteration 0;
# --stage sft reads DATA_PATH as instruction data (PREFIX_packed_{input_ids,attention_mask,labels}_document);
# --no-pad-to-seq-lengths pads each micro-batch only to its longest sample. For packed data
# (data_convert_* with --pack --neat-pack) use --reset-attention-mask instead of --no-pad-to-seq-lengths.
TUNE_ARGS="
    --finetune \
    --stage sft \
    --is-instruction-dataset \
    --prompt-type qwen3 \
    --reset-attention-mask
"

torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \
    $GPT_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    $TUNE_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/tune_mcore_qwen3_8b_128K_yarn_full_pack.log"
exit "${PIPESTATUS[0]}"
