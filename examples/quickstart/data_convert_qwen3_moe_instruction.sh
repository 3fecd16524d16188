#!/usr/bin/env bash
# Quick start step 7 (MODEL=qwen3-moe): the same alpaca-style parquet as instruction data in Qwen3's chat format
# (--prompt-type qwen3): <prefix>_packed_{input_ids,attention_mask,labels}_document, labels -100 on the prompts.
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen3-moe-tiny-hf}
INPUT=${INPUT:-$QS_OUT/dataset/alpaca_stdlib.parquet}   # alpaca-style rows (parquet, json, jsonl, ...)
OUTPUT_PREFIX=${OUTPUT_PREFIX:-$QS_OUT/finetune_dataset/alpaca}
mkdir -p "$(dirname "$OUTPUT_PREFIX")"
python ./preprocess_data.py \
    --input "$INPUT" \
    --tokenizer-name-or-path "$HF_DIR/" \
    --output-prefix "$OUTPUT_PREFIX" \
    --handler-name AlpacaStyleInstructionHandler \
    --prompt-type qwen3 \
    --tokenizer-type PretrainedFromHF \
    --workers 2 \
    --log-interval 500
