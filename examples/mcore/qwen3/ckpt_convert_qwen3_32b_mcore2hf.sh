#!/usr/bin/env bash
# Qwen3-32B: Megatron-mcore checkpoint trained by pretrain_qwen3_32b_4K_ptd.sh (any TP/PP) -> HuggingFace folder.
# --save-dir is the original HF folder, so the result goes to ./model_from_hf/qwen3-32b-hf/mg2hf/
# (config and tokenizer are taken from that folder).
# The untrained conversion (./model_weights/qwen3-32b_mcore/) converts back the same way.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf qwen3 \
    --load-dir ./ckpt/qwen3-32b/ \
    --save-dir ./model_from_hf/qwen3-32b-hf/
