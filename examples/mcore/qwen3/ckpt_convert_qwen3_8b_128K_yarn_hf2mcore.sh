#!/usr/bin/env bash
# Qwen3-8B for 128K (YaRN): HuggingFace -> Megatron-mcore legacy checkpoint, TP1 PP2 (as the 128K scripts), bf16.
# First enable YaRN in the HF folder's config.json as Qwen documents for 128K:
#   "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
# (and "max_position_embeddings": 131072). The checkpoint records it; training, SFT and inference use it, and a
# launch flag contradicting it is refused. Add --verify to compare logits of transformers' model and ours.
set -euo pipefail
python convert_ckpt.py \
    --use-mcore-models \
    --model-type GPT \
    --load-model-type hf \
    --save-model-type mg \
    --target-tensor-parallel-size 1 \
    --target-pipeline-parallel-size 2 \
    --load-dir ./model_from_hf/qwen3-8b-hf/ \
    --save-dir ./model_weights/qwen3-8b-128k_mcore/ \
    --tokenizer-model ./model_from_hf/qwen3-8b-hf/tokenizer.json \
    --model-type-hf qwen3 \
    --params-dtype bf16
