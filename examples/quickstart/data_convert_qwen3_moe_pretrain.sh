#!/usr/bin/env bash
# Quick start step 4 (MODEL=qwen3-moe; the tokenizer is Qwen3's): alpaca-style parquet -> Megatron indexed dataset (<prefix>_text_document.bin/.idx).
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf}
mkdir -p "$QS_OUT/dataset"
python ./preprocess_data.py \
    --input "$QS_OUT/dataset/alpaca_stdlib.parquet" \
    --tokenizer-name-or-path "$HF_DIR/" \
    --output-prefix "$QS_OUT/dataset/alpaca" \
    --tokenizer-type PretrainedFromHF \
    --workers 2 \
    --log-interval 500
