#!/usr/bin/env bash
# Llama-3-8B: Megatron-mcore checkpoint (any TP/PP) -> HuggingFace folder at ./model_from_hf/llama-3-8b-hf/mg2hf/.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama3 \
    --load-dir ./model_weights/llama-3-8b-mcore/ \
    --save-dir ./model_from_hf/llama-3-8b-hf/
