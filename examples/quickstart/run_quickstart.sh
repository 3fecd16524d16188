#!/usr/bin/env bash
# The quick start, offline on CPU: the seed's Qwen2.5 journey on an embedded tiny model.
#   make quickstart        (or: bash examples/quickstart/run_quickstart.sh)
# Everything is written under $QS_OUT (default ./quickstart_output, git-ignored). A re-run reuses the
# model folder and the parquet but converts, preprocesses and trains again.
set -euo pipefail
cd "$(dirname "$0")/../.."
export QS_OUT=${QS_OUT:-./quickstart_output}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
QS_MAX_ROWS=${QS_MAX_ROWS:-}
HF_DIR=$QS_OUT/model_from_hf/qwen2.5-tiny-hf
start=$(date +%s)
step() { printf '\n=== [%s] step %s (%ss)\n' "$(date +%H:%M:%S)" "$1" "$(( $(date +%s) - start ))"; }

step "1-2/6: tiny Qwen2.5 HF folder (Qwen2.5 tokenizer rebuilt offline) + alpaca-style parquet"
python -m mindspeed_llm.quickstart.assets --out "$QS_OUT" ${QS_MAX_ROWS:+--max-rows "$QS_MAX_ROWS"}

step "3/6: convert_ckpt.py hf -> mcore (TP1 PP2)"
bash examples/quickstart/ckpt_convert_qwen25_hf2mcore.sh

step "4/6: preprocess_data.py parquet -> indexed dataset"
bash examples/quickstart/data_convert_qwen25_pretrain.sh

step "5/6: pretrain_gpt.py with torchrun, 2 processes (TP1 PP2, bf16)"
rm -rf "$QS_OUT/ckpt/qwen2.5_tiny_pretrain"
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')} \
    bash examples/quickstart/pretrain_qwen25_tiny_ptd.sh
python -m mindspeed_llm.quickstart.summary --log "$QS_OUT/logs/train_mcore_qwen25_tiny.log"

step "6/6: convert the trained checkpoint back to HF and generate with transformers"
bash examples/quickstart/ckpt_convert_qwen25_mcore2hf.sh
python -m mindspeed_llm.quickstart.generate --model-dir "$HF_DIR/mg2hf" --max-new-tokens 16

step "done"
cat <<MSG
Everything was written under $QS_OUT:
  HF model folder         $HF_DIR
  alpaca-style parquet    $QS_OUT/dataset/alpaca_stdlib.parquet
  Megatron checkpoint     $QS_OUT/model_weights/qwen2.5_mcore   (converted, TP1 PP2)
  indexed dataset         $QS_OUT/dataset/alpaca_text_document.{bin,idx}
  trained checkpoint      $QS_OUT/ckpt/qwen2.5_tiny_pretrain
  training log            $QS_OUT/logs/train_mcore_qwen25_tiny.log
  trained model, HF       $HF_DIR/mg2hf
MSG
