#!/usr/bin/env bash
# Llama-3-8B: HuggingFace -> Megatron-mcore legacy checkpoint, TP8 PP1 (no q/k/v biases: no --add-qkv-bias).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 8 \
    --target-pipeline-parallel-size 1 \
    --load-dir ./model_from_hf/llama-3-8b-hf/ \
    --save-dir ./model_weights/llama-3-8b-mcore/ \
    --tokenizer-model ./model_from_hf/llama-3-8b-hf/tokenizer.json \
    --model-type-hf llama3
