#!/usr/bin/env bash
# Qwen3-30B-A3B: Megatron-mcore checkpoint trained by pretrain_qwen3_30b_a3b_4K_ptd.sh (any TP/PP/EP, either
# expert layout) -> HuggingFace folder with the hub's per-expert names (mlp.experts.N.gate_proj.weight): every
# expert is gathered from the EP rank file that holds it.
# --save-dir is the original HF folder, so the result goes to ./model_from_hf/qwen3-30b-a3b-hf/mg2hf/
# (config and tokenizer are taken from that folder).
# The untrained conversion (./model_weights/qwen3-30b-a3b_mcore/) converts back the same way.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf qwen3-moe \
    --load-dir ./ckpt/qwen3-30b-a3b/ \
    --save-dir ./model_from_hf/qwen3-30b-a3b-hf/
