#!/usr/bin/env bash
# Llama-2-7B: Megatron-mcore checkpoint trained by pretrain_llama2_7b_ptd.sh (any TP/PP) -> HuggingFace folder at ./model_from_hf/llama-2-7b-hf/mg2hf/.
# The untrained conversion (./model_weights/llama-2-7b-mcore/) converts back the same way.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama2 \
    --load-dir ./ckpt/llama-2-7b/ \
    --save-dir ./model_from_hf/llama-2-7b-hf/
