#!/usr/bin/env bash
# Llama-3-8B: HuggingFace -> Megatron-mcore legacy checkpoint, TP2 PP2 (no q/k/v biases: no --add-qkv-bias).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 2 \
    --target-pipeline-parallel-size 2 \
    --load-dir ./model_from_hf/llama-3-8b-hf/ \
    --save-dir ./model_weights/llama-3-8b-mcore/ \
    --tokenizer-model ./model_from_hf/llama-3-8b-hf/tokenizer.json \
    --model-type-hf llama3
