#!/usr/bin/env bash
# Quick start step 3 (MODEL=qwen3-moe): tiny Qwen3-MoE HF -> Megatron-mcore, TP1 PP1 EP2: each rank holds
# 4 of the 8 experts of every layer (the grouped layout, --moe-grouped-gemm); the expert settings come from config.json.
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf}
python ./convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 1 \
    --target-expert-parallel-size 2 \
    --moe-grouped-gemm \
    --load-dir "$HF_DIR/" \
    --save-dir "$QS_OUT/model_weights/qwen3_moe_mcore/" \
    --tokenizer-model "$HF_DIR/tokenizer.json" \
    --model-type-hf qwen3-moe \
    --overwrite
