#!/usr/bin/env bash
# Phi-3.5-mini: HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP8 (as pretrain_phi35_mini_ptd.sh), bf16.
# Phi-3's fused qkv_proj and gate_up_proj are split into megatron's linear_qkv / linear_fc1; its LongRoPE
# (48 short and 48 long factors, the switch beyond original_max_position_embeddings 4096, the attention factor)
# comes from config.json and is recorded in the checkpoint. Add --verify to compare logits with transformers'.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 8 \
    --load-dir ./model_from_hf/phi35-mini-hf/ \
    --save-dir ./model_weights/phi35-mini_mcore/ \
    --tokenizer-model ./model_from_hf/phi35-mini-hf/tokenizer.json \
    --model-type-hf phi3.5 \
    --params-dtype bf16
