#!/usr/bin/env bash
# Mixtral-8x7B: Megatron-mcore checkpoint trained by pretrain_mixtral_8x7b_ptd.sh (any TP/PP/EP, either expert
# layout) -> HuggingFace folder with the hub's names (block_sparse_moe.experts.N.w1/w2/w3): every expert is gathered
# from the EP rank file that holds it.
# --save-dir is the original HF folder, so the result goes to ./model_from_hf/mixtral-8x7b-hf/mg2hf/
# (config and tokenizer are taken from that folder).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf mixtral \
    --load-dir ./ckpt/mixtral-8x7b/ \
    --save-dir ./model_from_hf/mixtral-8x7b-hf/
