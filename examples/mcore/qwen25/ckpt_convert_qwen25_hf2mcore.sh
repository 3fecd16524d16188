#!/usr/bin/env bash
# Qwen2.5-7B: HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP4, bf16 (the seed's command).
# Add --verify to compare logits of transformers' model and ours (needs ~2x the model in fp32 of RAM).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 4 \
    --add-qkv-bias \
    --load-dir ./model_from_hf/qwen2.5-7b-hf/ \
    --save-dir ./model_weights/qwen2.5_mcore/ \
    --tokenizer-model ./model_from_hf/qwen2.5-7b-hf/tokenizer.json \
    --model-type-hf llama2 \
    --params-dtype bf16
