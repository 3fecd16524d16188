#!/usr/bin/env bash
# Llama-2-7B: Megatron-mcore checkpoint (any TP/PP) -> HuggingFace folder at ./model_from_hf/llama-2-7b-hf/mg2hf/.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama2 \
    --load-dir ./model_weights/llama-2-7b-mcore/ \
    --save-dir ./model_from_hf/llama-2-7b-hf/
