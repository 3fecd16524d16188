#!/usr/bin/env bash
# Mixtral-8x7B: HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP4 EP8 (as pretrain_mixtral_8x7b_ptd.sh), bf16:
# the 8 experts of each of the 32 layers one per EP rank, in megatron-core's grouped layout (--moe-grouped-gemm).
# Files mp_rank_00_PPP_EEE. The experts (block_sparse_moe.experts.N.w1/w2/w3, the router block_sparse_moe.gate)
# and their settings (num_local_experts, num_experts_per_tok) come from config.json; every expert tensor is read
# exactly once, and a missing one is refused by name (docs/moe.md).
# Add --verify to compare logits of transformers' model and ours (needs ~2x the model in fp32 of RAM).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 4 \
    --target-expert-parallel-size 8 \
    --moe-grouped-gemm \
    --load-dir ./model_from_hf/mixtral-8x7b-hf/ \
    --save-dir ./model_weights/mixtral-8x7b_mcore/ \
    --tokenizer-model ./model_from_hf/mixtral-8x7b-hf/tokenizer.json \
    --model-type-hf mixtral \
    --params-dtype bf16
