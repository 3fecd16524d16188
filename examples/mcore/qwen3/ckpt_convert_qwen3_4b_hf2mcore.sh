#!/usr/bin/env bash
# Qwen3-4B: HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP1 (as pretrain_qwen3_4b_4K_ptd.sh), bf16.
# Per-head q/k RMSNorms and head_dim 128 come from config.json (no flags needed); no q/k/v biases.
# Add --verify to compare logits of transformers' model and ours (needs ~2x the model in fp32 of RAM).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 1 \
    --load-dir ./model_from_hf/qwen3-4b-hf/ \
    --save-dir ./model_weights/qwen3-4b_mcore/ \
    --tokenizer-model ./model_from_hf/qwen3-4b-hf/tokenizer.json \
    --model-type-hf qwen3 \
    --params-dtype bf16
