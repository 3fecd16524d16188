#!/usr/bin/env bash
# Quick start step 6a: the trained Megatron checkpoint -> HF folder (written to <original HF folder>/mg2hf/).
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-tiny-hf}
python ./convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf qwen3 \
    --load-dir "$QS_OUT/ckpt/qwen3_tiny_pretrain/" \
    --save-dir "$HF_DIR/" \
    --overwrite
