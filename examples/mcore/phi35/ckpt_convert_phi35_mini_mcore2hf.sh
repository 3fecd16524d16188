#!/usr/bin/env bash
# Phi-3.5-mini: Megatron-mcore checkpoint trained by pretrain_phi35_mini_ptd.sh (any TP/PP) -> HuggingFace folder
# (fused qkv_proj / gate_up_proj again). --save-dir is the original HF folder, so the result goes to
# ./model_from_hf/phi35-mini-hf/mg2hf/ (config and tokenizer are taken from that folder).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf phi3.5 \
    --load-dir ./ckpt/phi35-mini/ \
    --save-dir ./model_from_hf/phi35-mini-hf/
