#!/usr/bin/env bash
# Tokenize the alpaca parquet into a Megatron indexed dataset for Mixtral-8x7B pretraining.
# Writes ./dataset/alpaca_text_document.bin and .idx (see docs/data.md).
# Mixtral shares the Mistral-7B tokenizer (32000 tokens):
# put its files (tokenizer.json, tokenizer_config.json, ...) in ./model_from_hf/mixtral-8x7b-hf/
# and the parquet in ./dataset/; paths are relative to the repository root.
set -euo pipefail
mkdir -p ./dataset

python ./preprocess_data.py \
    --input ./dataset/train-00000-of-00001-a09b74b3ef9c3b56.parquet \
    --tokenizer-name-or-path ./model_from_hf/mixtral-8x7b-hf/ \
    --output-prefix ./dataset/alpaca \
    --tokenizer-type PretrainedFromHF \
    --workers 4 \
    --log-interval 1000
