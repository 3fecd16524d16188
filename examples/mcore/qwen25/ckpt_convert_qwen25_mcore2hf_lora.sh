#!/usr/bin/env bash
# Qwen2.5-7B LoRA: the base (ckpt_convert_qwen25_hf2mcore.sh) + the adapter tune_qwen25_7b_4k_lora_ptd.sh saved
# (any TP/PP) -> merged HuggingFace weights in the base's dtype, in ./model_from_hf/qwen2.5-7b-hf/mg2hf/.
# With SAVE_LORA_TO_HF=1: the adapter alone, as a peft folder (adapter_config.json, adapter_model.safetensors)
# that peft.PeftModel.from_pretrained loads onto the original model. See docs/lora.md.
set -euo pipefail
SAVE_DIR=./model_from_hf/qwen2.5-7b-hf/
EXTRA=()
if [ "${SAVE_LORA_TO_HF:-0}" = "1" ]; then
    SAVE_DIR=./ckpt/qwen2.5-7b-lora-peft/
    EXTRA=(--save-lora-to-hf --hf-dir ./model_from_hf/qwen2.5-7b-hf/)
fi
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type mg \
    --save-model-type hf \
    --model-type-hf llama2 \
    --add-qkv-bias \
    --lora-r 8 \
    --lora-alpha 16 \
    --lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 \
    --load-dir ./model_weights/qwen2.5_mcore/ \
    --lora-load ./ckpt/qwen2.5-7b-lora/ \
    --save-dir "$SAVE_DIR" \
    "${EXTRA[@]}"
