# Sourced by the demo scripts: start `tritonforge serve` in the background on $HTTP_PORT,
# $GRPC_PORT and $METRICS_PORT (defaults 8000-8002; URL is the gRPC address), stop it when the
# script exits (SIGTERM; nothing is left running), and wait until /v2/health/ready answers.
# Usage: serve_in_background BIN_DIR REPO [extra `serve` options...]
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
URL=127.0.0.1:$GRPC_PORT

serve_in_background() {
    local bin=$1 repo=$2
    shift 2
    "$bin/tritonforge" serve --repo "$repo" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
        --metrics-port "$METRICS_PORT" "$@" &
    SERVE=$!
    trap 'kill -TERM "$SERVE" 2>/dev/null || true; wait "$SERVE" 2>/dev/null || true' EXIT
    echo "waiting for Triton at http://127.0.0.1:$HTTP_PORT/v2/health/ready"
    for _ in $(seq 1 300); do
        kill -0 "$SERVE" 2>/dev/null || { echo "tritonforge serve exited"; exit 1; }
        "$bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/v2/health/ready', timeout=1)" \
            2>/dev/null && return 0
        sleep 1
    done
    echo "Triton was not ready after 300 s"; exit 1
}
