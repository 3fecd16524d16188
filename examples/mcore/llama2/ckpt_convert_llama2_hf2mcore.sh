#!/usr/bin/env bash
# Llama-2-7B: HuggingFace -> Megatron-mcore legacy checkpoint, TP8 PP1 (no q/k/v biases: no --add-qkv-bias).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 8 \
    --target-pipeline-parallel-size 1 \
    --load-dir ./model_from_hf/llama-2-7b-hf/ \
    --save-dir ./model_weights/llama-2-7b-mcore/ \
    --tokenizer-model ./model_from_hf/llama-2-7b-hf/tokenizer.json \
    --model-type-hf llama2
