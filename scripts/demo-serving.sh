#!/usr/bin/env bash
# The serving half of `make demo`: start `tritonforge serve` in the background, wait until
# Triton is ready, query the MiniLM text ensemble over gRPC, verify Triton against PyTorch and
# ONNX Runtime, run a short bench, then stop the server (SIGTERM; nothing is left running).
# Usage: scripts/demo-serving.sh BIN_DIR REPO
set -euo pipefail
BIN=${1:-.venv/bin}
REPO=${2:-model_repo}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
URL=127.0.0.1:$GRPC_PORT

"$BIN/tritonforge" serve --repo "$REPO" --nobatch-twins --http-port "$HTTP_PORT" \
    --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" &
SERVE=$!
stop() { kill -TERM "$SERVE" 2>/dev/null || true; wait "$SERVE" 2>/dev/null || true; }
trap stop EXIT

echo "waiting for Triton at http://127.0.0.1:$HTTP_PORT/v2/health/ready"
for _ in $(seq 1 300); do
    kill -0 "$SERVE" 2>/dev/null || { echo "tritonforge serve exited"; exit 1; }
    "$BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/v2/health/ready', timeout=1)" \
        2>/dev/null && break
    sleep 1
done

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
