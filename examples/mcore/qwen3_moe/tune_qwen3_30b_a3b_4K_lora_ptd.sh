#!/usr/bin/env bash
# Qwen3-30B-A3B (Qwen3-MoE) LoRA instruction fine-tuning (SFT), 4K sequence, bf16, TP1 PP2 EP8 on 16
# processes (2 nodes x 8): the layout ckpt_convert_qwen3_moe_hf2mcore.sh writes (16 of the 128 experts per rank).
# Fine-tune with torchrun (run it on every node with NNODES and NODE_RANK set).
# Every variable below can be overridden from the environment, e.g. `GBS=128 bash examples/mcore/qwen3_moe/tune_qwen3_30b_a3b_4K_full_ptd.sh`.
# Inputs: a checkpoint from ckpt_convert_qwen3_moe_hf2mcore.sh and instruction data from
# data_convert_qwen3_moe_instruction.sh (--prompt-type qwen3); convert the result back with
# ckpt_convert_qwen3_moe_mcore2hf.sh, its --load-dir set to CKPT_SAVE_DIR. The padding and the -100 prompt tokens
# are routed but left out of the load-balancing loss (docs/moe.md, "Router losses").
# LoRA on an MoE model adapts the attention layers (linear_qkv linear_proj); the experts, the router and the
# rest stay frozen. MindSpeed-LLM's script also lists linear_fc1 linear_fc2, which on this all-MoE model are
# the experts: refused here with a line (docs/lora.md). CKPT_SAVE_DIR gets adapter-only saves
# (--lora-ckpt-filter); export them with the convert_ckpt.py command of ckpt_convert_qwen3_moe_mcore2hf.sh,
# its --load-dir the converted base (CKPT_LOAD_DIR), plus --lora-load CKPT_SAVE_DIR (merged into the weights)
# and --save-lora-to-hf for a peft adapter folder instead.
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

NPUS_PER_NODE=${NPUS_PER_NODE:-8}      # processes per node (NPUs, GPUs or CPU processes)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

# please fill these path configurations
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/qwen3-30b-a3b_mcore/"}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/qwen3-30b-a3b-lora/"}
DATA_PATH=${DATA_PATH:-"./finetune_dataset/alpaca"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/qwen3-30b-a3b-hf/"}

TP=${TP:-1}
PP=${PP:-2}
EP=${EP:-8}
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

# config.json's experts: num_experts 128, num_experts_per_tok 8, moe_intermediate_size 768, norm_topk_prob true
# (--norm-topk-prob), every layer sparse (decoder_sparse_step 1, no mlp_only_layers: --moe-layer-freq 1).
# --moe-token-dispatcher-type alltoall: each routed token copy goes to its expert's EP rank (MindSpeed-LLM's
# alltoall_seq runs as this). The load-balancing loss is logged apart from the lm loss, without its coefficient.
MOE_ARGS="
    --num-experts 128 \
    --moe-router-topk 8 \
    --moe-ffn-hidden-size 768 \
    --norm-topk-prob \
    --moe-layer-freq 1 \
    --moe-grouped-gemm \
    --moe-token-dispatcher-type alltoall \
    --moe-permutation-async-comm \
    --moe-router-load-balancing-type aux_loss \
    --moe-aux-loss-coeff 0.001
"

# --qk-layernorm and --kv-channels 128: Qwen3's per-head q/k RMSNorms and head_dim (config.json's head_dim).
# --ffn-hidden-size 6144: config.json's intermediate_size (dense layers only: this model has none).
GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --expert-model-parallel-size ${EP} \
    --sequence-parallel \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --recompute-granularity full \
    --recompute-method uniform \
    --recompute-num-layers 1 \
    --use-flash-attn \
    --use-fused-rotary-pos-emb \
    --use-fused-swiglu \
    --use-fused-rmsnorm \
    --qk-layernorm \
    --kv-channels 128 \
    --num-layers 48 \
    --hidden-size 2048 \
    --ffn-hidden-size 6144 \
    --num-attention-heads 32 \
    --group-query-attention \
    --num-query-groups 4 \
    --max-position-embeddings 40960 \
    --seq-length ${SEQ_LEN} \
    --disable-bias-linear \
    --position-embedding-type rope \
    --use-rotary-position-embeddings \
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
    --lr 1e-4 \
    --min-lr 1e-6 \
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
    --handler-name AlpacaStyleInstructionHandler \
    --enable-thinking true \
    --workers 4 \
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
    --no-pad-to-seq-lengths
"

LORA_ARGS="
    --lora-r 16 \
    --lora-alpha 32 \
    --lora-target-modules linear_qkv linear_proj \
    --lora-ckpt-filter
"

torchrun $DISTRIBUTED_ARGS posttrain_gpt.py \
    $GPT_ARGS \
    $MOE_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    $TUNE_ARGS \
    $LORA_ARGS \
    --distributed-backend nccl \
    --load ${CKPT_LOAD_DIR} \
    --save ${CKPT_SAVE_DIR} \
    2>&1 | tee "$LOG_DIR/tune_mcore_qwen3_30b_a3b_4K_lora.log"
exit "${PIPESTATUS[0]}"
