#!/usr/bin/env bash
# Tokenize a pairwise (preference) dataset for DPO in Qwen2.5's chat format (ChatML): orca_dpo_pairs' rows
# (system, question, chosen, rejected; MindSpeed-LLM's example) -> both conversations, the prompt labelled -100,
# only each answer learned. Writes ./pairwise_dataset/orca_rlhf_qwen25_packed_{chosen,rejected}_{input_ids,labels}
# _document.bin and .idx (see docs/dpo.md); align with dpo_qwen25_7b_4k_ptd.sh
# (DATA_PATH=./pairwise_dataset/orca_rlhf_qwen25). Put the HF tokenizer files in ./model_from_hf/qwen2.5-7b-hf/
# and orca_rlhf.jsonl in ./dataset/; paths are relative to the repository root.
set -euo pipefail
mkdir -p ./pairwise_dataset

python ./preprocess_data.py \
    --input ./dataset/orca_rlhf.jsonl \
    --tokenizer-name-or-path ./model_from_hf/qwen2.5-7b-hf/ \
    --output-prefix ./pairwise_dataset/orca_rlhf_qwen25 \
    --handler-name AlpacaStylePairwiseHandler \
    --tokenizer-type PretrainedFromHF \
    --workers 4 \
    --log-interval 1000 \
    --prompt-type qwen \
    --map-keys '{"prompt":"question", "query":"", "system":"system"}'
