#!/usr/bin/env bash
# Quick start steps 6 and 9 (MODEL=qwen3-moe): a trained Megatron checkpoint (every expert gathered from its EP rank) -> HF folder (into <HF_DIR>/mg2hf/ when SAVE_DIR
# is the original HF folder, else into SAVE_DIR itself; the tokenizer comes from HF_DIR).
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf}
LOAD_DIR=${LOAD_DIR:-$QS_OUT/ckpt/qwen3_moe_tiny_pretrain/}  # step 9 converts the fine-tuned one
SAVE_DIR=${SAVE_DIR:-$HF_DIR/}
python ./convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf qwen3-moe \
    --load-dir "$LOAD_DIR" \
    --save-dir "$SAVE_DIR" \
    --hf-dir "$HF_DIR/" \
    --overwrite
