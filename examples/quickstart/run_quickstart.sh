#!/usr/bin/env bash
# The quick start, offline on CPU: the seed's Qwen2.5 journey on an embedded tiny model.
#   make quickstart        (or: bash examples/quickstart/run_quickstart.sh)
#   make quickstart MODEL=qwen3    (or: QS_MODEL=qwen3 bash ...): the same journey with a tiny Qwen3
#                                  (per-head q/k RMSNorms, head_dim != hidden / heads, Qwen3's tokenizer)
#   make quickstart MODEL=qwen3-moe  the same journey with a tiny Qwen3-MoE (8 experts, top-2), trained,
#                                  fine-tuned and served at TP1 PP1 EP2: each of the 2 processes holds 4 experts
# Everything is written under $QS_OUT (default ./quickstart_output, git-ignored). A re-run reuses the
# model folder and the parquet but converts, preprocesses and trains again. Steps 7-10 fine-tune the
# pretrained model on the same rows as chat data (SFT) and chat with it through inference.py; QS_SFT=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export QS_OUT=${QS_OUT:-./quickstart_output}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
QS_MAX_ROWS=${QS_MAX_ROWS:-}
QS_MODEL=${QS_MODEL:-qwen25}
case "$QS_MODEL" in
    qwen25) NAME=qwen25; LABEL=Qwen2.5; HF_DIR=$QS_OUT/model_from_hf/qwen2.5-tiny-hf; CKPT=qwen2.5 ;;
    qwen3) NAME=qwen3; LABEL=Qwen3; HF_DIR=$QS_OUT/model_from_hf/qwen3-tiny-hf; CKPT=qwen3 ;;
    qwen3-moe) NAME=qwen3_moe; LABEL=Qwen3-MoE; HF_DIR=$QS_OUT/model_from_hf/qwen3-moe-tiny-hf; CKPT=qwen3_moe ;;
    *) echo "error: QS_MODEL (make quickstart MODEL=...) must be qwen25, qwen3 or qwen3-moe, got '$QS_MODEL'" >&2
       exit 2 ;;
esac
# The layout of steps 3, 5, 8 and 10 (the scripts' own): the dense models TP1 PP2, the MoE model TP1 PP1 EP2.
LAYOUT="TP1 PP2"; [ "$QS_MODEL" = "qwen3-moe" ] && LAYOUT="TP1 PP1 EP2"
start=$(date +%s)
step() { printf '\n=== [%s] step %s (%ss)\n' "$(date +%H:%M:%S)" "$1" "$(( $(date +%s) - start ))"; }

step "1-2/10: tiny $LABEL HF folder (${LABEL%-MoE} tokenizer rebuilt offline) + alpaca-style parquet"
python -m mindspeed_llm.quickstart.assets --out "$QS_OUT" --model "$QS_MODEL" ${QS_MAX_ROWS:+--max-rows "$QS_MAX_ROWS"}

step "3/10: convert_ckpt.py hf -> mcore ($LAYOUT)"
bash examples/quickstart/ckpt_convert_${NAME}_hf2mcore.sh

step "4/10: preprocess_data.py parquet -> indexed dataset"
bash examples/quickstart/data_convert_${NAME}_pretrain.sh

step "5/10: pretrain_gpt.py with torchrun, 2 processes ($LAYOUT, bf16)"
rm -rf "$QS_OUT/ckpt/${CKPT}_tiny_pretrain"
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')} \
    bash examples/quickstart/pretrain_${NAME}_tiny_ptd.sh
python mindspeed_llm/quickstart/summary.py --log "$QS_OUT/logs/train_mcore_${NAME}_tiny.log"  # a plain file: no torch import

step "6/10: convert the trained checkpoint back to HF; held-out loss before/after training and a generation"
bash examples/quickstart/ckpt_convert_${NAME}_mcore2hf.sh
python -m mindspeed_llm.quickstart.generate --model-dir "$HF_DIR/mg2hf" --untrained-dir "$HF_DIR" \
    --max-new-tokens 16 --seq-length "${SEQ_LEN:-128}"

if [ "${QS_SFT:-1}" = "1" ]; then
PROMPT_TYPE=qwen; [ "$QS_MODEL" != "qwen25" ] && PROMPT_TYPE=qwen3
step "7/10: preprocess_data.py parquet -> instruction data ($PROMPT_TYPE chat format, labels -100 on prompts)"
bash examples/quickstart/data_convert_${NAME}_instruction.sh

step "8/10: posttrain_gpt.py --stage sft: fine-tune the pretrained checkpoint on it (torchrun, $LAYOUT, bf16)"
rm -rf "$QS_OUT/ckpt/${CKPT}_tiny_sft"
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')} \
    bash examples/quickstart/tune_${NAME}_tiny_ptd.sh

step "9/10: convert the fine-tuned checkpoint back to HF (for transformers)"
LOAD_DIR="$QS_OUT/ckpt/${CKPT}_tiny_sft/" SAVE_DIR="$QS_OUT/model_from_hf/${CKPT}-tiny-sft-hf/" \
    bash examples/quickstart/ckpt_convert_${NAME}_mcore2hf.sh

step "10/10: inference.py --task chat --prompt-type $PROMPT_TYPE on the fine-tuned checkpoint (torchrun, $LAYOUT, as trained)"
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')} \
    bash examples/quickstart/generate_${NAME}_tiny_ptd.sh
cat <<NOTE
[chat] inference.py rendered the question with the $PROMPT_TYPE template (the SFT data's chat format) up to the
[chat] assistant header and streamed the greedy answer; an answer ends at the template's end of turn (<|im_end|>)
[chat] or EOS, or after ${MAX_NEW_TOKENS:-48} new tokens. What to expect: this 4-layer model, fine-tuned for
[chat] ${SFT_ITERS:-10} steps, has learned which answer tokens are frequent, not where an answer ends, so its answer is
[chat] usually one frequent token repeated up to the limit. The stop itself works: on a model that does end its
[chat] turn, inference.py stops there (tests/inference; tests/quickstart fine-tunes this model on one-word answers
[chat] for 150 steps, and it then ends each answer with <|im_end|>). This leg shows the path (instruction data,
[chat] SFT, the template at inference), not a better model.
NOTE
fi

step "done"
cat <<MSG
Everything was written under $QS_OUT:
  HF model folder         $HF_DIR
  alpaca-style parquet    $QS_OUT/dataset/alpaca_stdlib.parquet
  Megatron checkpoint     $QS_OUT/model_weights/${CKPT}_mcore   (converted, $LAYOUT)
  indexed dataset         $QS_OUT/dataset/alpaca_text_document.{bin,idx}
  trained checkpoint      $QS_OUT/ckpt/${CKPT}_tiny_pretrain
  training log            $QS_OUT/logs/train_mcore_${NAME}_tiny.log
  trained model, HF       $HF_DIR/mg2hf
  instruction data        $QS_OUT/finetune_dataset/alpaca_packed_{input_ids,attention_mask,labels}_document
  fine-tuned checkpoint   $QS_OUT/ckpt/${CKPT}_tiny_sft   (log: $QS_OUT/logs/tune_mcore_${NAME}_tiny.log)
  fine-tuned model, HF    $QS_OUT/model_from_hf/${CKPT}-tiny-sft-hf
  chat (inference.py)     $QS_OUT/logs/generate_mcore_${NAME}_tiny.log
MSG
