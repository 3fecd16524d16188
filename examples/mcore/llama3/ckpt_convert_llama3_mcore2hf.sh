#!/usr/bin/env bash
# Llama-3-8B: Megatron-mcore checkpoint trained by pretrain_llama3_8b_ptd.sh (any TP/PP) -> HuggingFace folder at ./model_from_hf/llama-3-8b-hf/mg2hf/.
# The untrained conversion (./model_weights/llama-3-8b-mcore/) converts back the same way.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama3 \
    --load-dir ./ckpt/llama-3-8b/ \
    --save-dir ./model_from_hf/llama-3-8b-hf/
