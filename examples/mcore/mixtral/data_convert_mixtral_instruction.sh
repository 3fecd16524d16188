#!/usr/bin/env bash
# Tokenize the alpaca parquet as instruction (fine-tuning) data in Mistral's instruction format ([INST] ... [/INST], Mixtral-Instruct's):
# prompts get label -100, only the answers are learned.
# Writes ./finetune_dataset/alpaca_packed_{input_ids,attention_mask,labels}_document.bin and .idx
# (see docs/data.md); fine-tune with tune_mixtral_8x7b_full_ptd.sh (DATA_PATH=./finetune_dataset/alpaca).
# Put the HF tokenizer files in ./model_from_hf/mixtral-8x7b-hf/ and the parquet in ./dataset/;
# paths are relative to the repository root. Add --pack --neat-pack --seq-length 4096 to pack samples
# (then fine-tune with --reset-attention-mask: each sample attends only within itself).
set -euo pipefail
mkdir -p ./finetune_dataset

python ./preprocess_data.py \
    --input ./dataset/train-00000-of-00001-a09b74b3ef9c3b56.parquet \
    --tokenizer-name-or-path ./model_from_hf/mixtral-8x7b-hf/ \
    --output-prefix ./finetune_dataset/alpaca \
    --handler-name AlpacaStyleInstructionHandler \
    --tokenizer-type PretrainedFromHF \
    --workers 4 \
    --log-interval 1000 \
    --prompt-type mistral
