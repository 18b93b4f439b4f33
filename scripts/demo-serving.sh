#!/usr/bin/env bash
# The serving half of `make demo`: start `tritonforge serve` in the background, wait until
# Triton is ready, query the MiniLM text ensemble over gRPC, verify Triton against PyTorch and
# ONNX Runtime, run a short bench, then stop the server (SIGTERM; nothing is left running).
# Usage: scripts/demo-serving.sh BIN_DIR REPO
set -euo pipefail
BIN=${1:-.venv/bin}
REPO=${2:-model_repo}
# shellcheck source=scripts/serve-background.sh
source "$(dirname "$0")/serve-background.sh"
serve_in_background "$BIN" "$REPO" --nobatch-twins

"$BIN/tritonforge" query bert_fp32_text --url "$URL" \
    --text "A man is eating food." --text "A man is eating a piece of bread." \
    --text "The new movie is awesome." --text "The stock market fell sharply today."
if [ -d "$REPO/bert_w6a6_text" ]; then
    "$BIN/tritonforge" query bert_w6a6_text --url "$URL" \
        --text "A man is eating food." --text "A man is eating a piece of bread." \
        --text "The new movie is awesome." --text "The stock market fell sharply today."
fi
"$BIN/tritonforge" verify bert_fp32 --repo "$REPO" --triton "$URL" \
    --json "$REPO/bert_fp32.verify-triton.json"
"$BIN/tritonforge" bench bert_fp32_text --url "$URL" --concurrency 1,16 --requests 500 \
    --json "$REPO/bert_fp32_text.bench.json" --plot "$REPO/bert_fp32_text.bench.png"
