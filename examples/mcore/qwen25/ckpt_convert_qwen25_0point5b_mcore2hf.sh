#!/usr/bin/env bash
# Qwen2.5-0.5B: Megatron-mcore checkpoint trained by pretrain_qwen25_0point5b_32k_ptd.sh (any TP/PP) -> HuggingFace folder.
# --save-dir is the original HF folder, so the result goes to ./model_from_hf/qwen2.5-0.5b-hf/mg2hf/
# (config and tokenizer are taken from that folder).
# The untrained conversion (./model_weights/qwen2.5-0.5b_mcore/) converts back the same way.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama2 \
    --add-qkv-bias \
    --load-dir ./ckpt/qwen2.5-0.5b/ \
    --save-dir ./model_from_hf/qwen2.5-0.5b-hf/
