#!/usr/bin/env bash
# The quick start's one-command leg, MindSpeed-LLM's current default journey: train straight from the HF folder
# and the raw parquet, with no convert and no preprocess step (docs/train_from_hf.md).
#   make quickstart-from-hf              (or: bash examples/quickstart/run_quickstart_from_hf.sh)
#   make quickstart-from-hf MODEL=qwen3  (or: QS_MODEL=qwen3 bash ...)
# The first launch converts the HF folder once (into <HF folder>/megatron_cache_tp1pp2ep1) and preprocesses the
# parquet once (next to it), then trains and writes an HF copy of its save (<save>/mg2hf_iteration<N>); the
# second launch reuses both caches (its log says so) and shows the time to its first step.
set -euo pipefail
cd "$(dirname "$0")/../.."
export QS_OUT=${QS_OUT:-./quickstart_output}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
QS_MODEL=${QS_MODEL:-qwen25}
case "$QS_MODEL" in
    qwen25) NAME=qwen25; HF_DIR=$QS_OUT/model_from_hf/qwen2.5-tiny-hf; CKPT=qwen2.5 ;;
    qwen3) NAME=qwen3; HF_DIR=$QS_OUT/model_from_hf/qwen3-tiny-hf; CKPT=qwen3 ;;
    *) echo "error: QS_MODEL (make quickstart-from-hf MODEL=...) must be qwen25 or qwen3, got '$QS_MODEL'" >&2; exit 2 ;;
esac
TRAIN_ITERS=${TRAIN_ITERS:-30}
PARQUET=$QS_OUT/dataset/alpaca_stdlib.parquet
start=$(date +%s)
step() { printf '\n=== [%s] step %s (%ss)\n' "$(date +%H:%M:%S)" "$1" "$(( $(date +%s) - start ))"; }
free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "1/4: tiny HF folder + alpaca-style parquet"
python -m mindspeed_llm.quickstart.assets --out "$QS_OUT" --model "$QS_MODEL" ${QS_MAX_ROWS:+--max-rows "$QS_MAX_ROWS"}

step "2/4: one command: pretrain_gpt.py --load <HF folder> --data-path <parquet> (converted and preprocessed at start-up)"
rm -rf "$QS_OUT/ckpt/${CKPT}_tiny_from_hf" "$QS_OUT/ckpt/${CKPT}_tiny_from_hf_again"
MASTER_PORT=${MASTER_PORT:-$(free_port)} CKPT_LOAD_DIR="$HF_DIR/" DATA_PATH="$PARQUET" TRAIN_ITERS=$TRAIN_ITERS \
    CKPT_SAVE_DIR="$QS_OUT/ckpt/${CKPT}_tiny_from_hf/" LOG_DIR="$QS_OUT/logs/from_hf" \
    bash examples/quickstart/pretrain_${NAME}_tiny_ptd.sh

step "3/4: the same command again: both caches reused, the time to the first step shown"
MASTER_PORT=${MASTER_PORT:-$(free_port)} CKPT_LOAD_DIR="$HF_DIR/" DATA_PATH="$PARQUET" TRAIN_ITERS=2 \
    CKPT_SAVE_DIR="$QS_OUT/ckpt/${CKPT}_tiny_from_hf_again/" LOG_DIR="$QS_OUT/logs/from_hf_again" \
    bash examples/quickstart/pretrain_${NAME}_tiny_ptd.sh | grep -E "reusing|time to first step|lm loss"

step "4/4: the HF copy of the last save, generated from with transformers"
python -m mindspeed_llm.quickstart.generate --model-dir "$QS_OUT/ckpt/${CKPT}_tiny_from_hf/mg2hf_iteration$TRAIN_ITERS" \
    --untrained-dir "$HF_DIR" --max-new-tokens 16 --seq-length "${SEQ_LEN:-128}"

step "done"
cat <<MSG
  converted checkpoint (cache)   $HF_DIR/megatron_cache_tp1pp2ep1
  preprocessed parquet (cache)   $QS_OUT/dataset/alpaca_stdlib.mindspeed_cache-*/
  trained checkpoint             $QS_OUT/ckpt/${CKPT}_tiny_from_hf
  its HF copy                    $QS_OUT/ckpt/${CKPT}_tiny_from_hf/mg2hf_iteration$TRAIN_ITERS
MSG
