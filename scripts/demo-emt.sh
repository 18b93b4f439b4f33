#!/usr/bin/env bash
# `make emt`: EMT neural video delivery on the demo clip. Write the clip, meta-train ESPCN x2 on
# it, tune every 5-s chunk and publish it as version k of `emt_demo`, serve the repository with a
# local Triton, play the clip through it (each chunk upscaled by its own version) and stop.
# Usage: scripts/demo-emt.sh BIN_DIR REPO
set -euo pipefail
BIN=${1:-.venv/bin}
REPO=${2:-model_repo}
OUT=${OUT:-emt_demo}
mkdir -p "$OUT"

"$BIN/tritonforge" emt clip "$OUT/clip.mp4"
"$BIN/tritonforge" emt meta-train "$OUT/clip.mp4" --out "$OUT/meta.pt"
"$BIN/tritonforge" emt tune "$OUT/clip.mp4" --name emt_demo --meta "$OUT/meta.pt" --repo "$REPO" --force

# shellcheck source=scripts/serve-background.sh
source "$(dirname "$0")/serve-background.sh"
serve_in_background "$BIN" "$REPO"

"$BIN/tritonforge" emt play "$OUT/clip.mp4" --name emt_demo --url "$URL" --repo "$REPO" \
    --out "$OUT/sr.mp4" --plot "$OUT/play.png" --json "$OUT/play.json"
"$BIN/tritonforge" bench emt_demo --url "$URL" --repo "$REPO" --frame-size 640x360 \
    --concurrency 1,4 --requests 200 --json "$OUT/bench.json"
