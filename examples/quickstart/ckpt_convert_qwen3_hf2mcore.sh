#!/usr/bin/env bash
# Quick start step 3: tiny Qwen3 HF -> Megatron-mcore, TP1 PP2 (q/k norms and head_dim come from config.json).
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-tiny-hf}
python ./convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 2 \
    --load-dir "$HF_DIR/" \
    --save-dir "$QS_OUT/model_weights/qwen3_mcore/" \
    --tokenizer-model "$HF_DIR/tokenizer.json" \
    --model-type-hf qwen3 \
    --overwrite
