#!/usr/bin/env bash
# Qwen2.5-32B: HuggingFace -> Megatron-mcore legacy checkpoint, TP8 PP2, bf16.
# Add --verify to compare logits of transformers' model and ours (needs ~2x the model in fp32 of RAM).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 8 \
    --target-pipeline-parallel-size 2 \
    --add-qkv-bias \
    --load-dir ./model_from_hf/qwen2.5-32b-hf/ \
    --save-dir ./model_weights/qwen2.5-32b_mcore/ \
    --tokenizer-model ./model_from_hf/qwen2.5-32b-hf/tokenizer.json \
    --model-type-hf llama2 \
    --params-dtype bf16
