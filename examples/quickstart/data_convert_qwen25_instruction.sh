#!/usr/bin/env bash
# Quick start step 7: the same alpaca-style parquet as instruction data in Qwen2.5's chat format
# (--prompt-type qwen): <prefix>_packed_{input_ids,attention_mask,labels}_document, labels -100 on the prompts.
set -euo pipefail
QS_OUT=${QS_OUT:-./quickstart_output}
HF_DIR=${HF_DIR:-$QS_OUT/model_from_hf/qwen2.5-tiny-hf}
INPUT=${INPUT:-$QS_OUT/dataset/alpaca_stdlib.parquet}   # alpaca-style rows (parquet, json, jsonl, ...)
OUTPUT_PREFIX=${OUTPUT_PREFIX:-$QS_OUT/finetune_dataset/alpaca}
mkdir -p "$(dirname "$OUTPUT_PREFIX")"
python ./preprocess_data.py \
    --input "$INPUT" \
    --tokenizer-name-or-path "$HF_DIR/" \
    --output-prefix "$OUTPUT_PREFIX" \
    --handler-name AlpacaStyleInstructionHandler \
    --prompt-type qwen \
    --tokenizer-type PretrainedFromHF \
    --workers 2 \
    --log-interval 500
