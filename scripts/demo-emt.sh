#!/usr/bin/env bash
# `make emt`: EMT neural video delivery on the demo clip. Write the clip, meta-train ESPCN x2 on
# it, tune every 5-s chunk and publish it as version k of `emt_demo`, serve the repository with a
# local Triton, play the clip through it (each chunk upscaled by its own version) and stop.
# Usage: scripts/demo-emt.sh BIN_DIR REPO
set -euo pipefail
BIN=${1:-.venv/bin}
REPO=${2:-model_repo}
OUT=${OUT:-emt_demo}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
URL=127.0.0.1:$GRPC_PORT
mkdir -p "$OUT"

"$BIN/tritonforge" emt clip "$OUT/clip.mp4"
"$BIN/tritonforge" emt meta-train "$OUT/clip.mp4" --out "$OUT/meta.pt"
"$BIN/tritonforge" emt tune "$OUT/clip.mp4" --name emt_demo --meta "$OUT/meta.pt" --repo "$REPO" --force

"$BIN/tritonforge" serve --repo "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" &
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

"$BIN/tritonforge" emt play "$OUT/clip.mp4" --name emt_demo --url "$URL" --repo "$REPO" \
    --out "$OUT/sr.mp4" --plot "$OUT/play.png" --json "$OUT/play.json"
"$BIN/tritonforge" bench emt_demo --url "$URL" --repo "$REPO" --frame-size 640x360 \
    --concurrency 1,4 --requests 200 --json "$OUT/bench.json"
