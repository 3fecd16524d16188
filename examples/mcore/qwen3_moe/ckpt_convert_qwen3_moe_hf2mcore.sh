#!/usr/bin/env bash
# Qwen3-30B-A3B (Qwen3-MoE): HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP2 EP8 (as
# pretrain_qwen3_30b_a3b_4K_ptd.sh), bf16: the 128 experts of each of the 48 layers over 8 EP ranks (16 each),
# in megatron-core's grouped layout (--moe-grouped-gemm: mlp.experts.weight1/weight2). Files mp_rank_00_PPP_EEE.
# The expert settings (num_experts, num_experts_per_tok, moe_intermediate_size, norm_topk_prob, mlp_only_layers)
# come from config.json; every expert tensor is read exactly once, and a missing one is refused by name.
# Other layouts: --target-expert-parallel-size must divide 128; the experts' TP is the target TP (docs/moe.md).
# Add --verify to compare logits of transformers' model and ours (needs ~2x the model in fp32 of RAM).
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 2 \
    --target-expert-parallel-size 8 \
    --moe-grouped-gemm \
    --load-dir ./model_from_hf/qwen3-30b-a3b-hf/ \
    --save-dir ./model_weights/qwen3-30b-a3b_mcore/ \
    --tokenizer-model ./model_from_hf/qwen3-30b-a3b-hf/tokenizer.json \
    --model-type-hf qwen3-moe \
    --params-dtype bf16
