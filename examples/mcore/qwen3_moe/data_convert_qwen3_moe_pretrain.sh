#!/usr/bin/env bash
# Tokenize the alpaca parquet into a Megatron indexed dataset for Qwen3-MoE (Qwen3-30B-A3B) pretraining.
# Writes ./dataset/alpaca_text_document.bin and .idx (see docs/data.md). Qwen3-MoE shares the dense Qwen3 tokenizer:
# put its files (tokenizer.json, tokenizer_config.json, ...) in ./model_from_hf/qwen3-30b-a3b-hf/
# and the parquet in ./dataset/; paths are relative to the repository root.
set -euo pipefail
mkdir -p ./dataset

python ./preprocess_data.py \
    --input ./dataset/train-00000-of-00001-a09b74b3ef9c3b56.parquet \
    --tokenizer-name-or-path ./model_from_hf/qwen3-30b-a3b-hf/ \
    --output-prefix ./dataset/alpaca \
    --tokenizer-type PretrainedFromHF \
    --workers 4 \
    --log-interval 1000
