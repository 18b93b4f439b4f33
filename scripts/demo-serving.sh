#!/usr/bin/env bash
# The serving half of `make demo`: start `tritonforge serve` in the background, wait until
# Triton is ready, query the MiniLM text ensemble over gRPC, verify Triton against PyTorch and
# ONNX Runtime, run a short bench, then stop the server (SIGTERM; nothing is left running).
# Usage: scripts/demo-serving.sh BIN_DIR REPO [FULL_NAME]
# FULL_NAME is the full-quality export (bert_bf16 or bert_fp32); bert_w6a6 is served beside it.
set -euo pipefail
BIN=${1:-.venv/bin}
REPO=${2:-model_repo}
FULL=${3:-bert_fp32}
# shellcheck source=scripts/serve-background.sh
source "$(dirname "$0")/serve-background.sh"
serve_in_background "$BIN" "$REPO" --nobatch-twins

MODELS=("$FULL")
[ -d "$REPO/bert_w6a6_text" ] && MODELS+=(bert_w6a6)
for model in "${MODELS[@]}"; do
    "$BIN/tritonforge" query "${model}_text" --url "$URL" \
        --text "A man is eating food." --text "A man is eating a piece of bread." \
        --text "The new movie is awesome." --text "The stock market fell sharply today."
done
"$BIN/tritonforge" verify "$FULL" --repo "$REPO" --triton "$URL" \
    --json "$REPO/$FULL.verify-triton.json"
# Both text endpoints, at 1 and 16 concurrent requests: the full-quality one beside the 6-bit one.
for model in "${MODELS[@]}"; do
    "$BIN/tritonforge" bench "${model}_text" --url "$URL" --concurrency 1,16 --requests 500 \
        --json "$REPO/${model}_text.bench.json" --plot "$REPO/${model}_text.bench.png"
done
