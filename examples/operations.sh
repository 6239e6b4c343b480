#!/usr/bin/env bash
# docs/operations.md's walkthrough, run for real: a config file, keys, model management, the
# Open Inference Protocol, the access log and JSON logs. Run it with chronoserve installed (the
# README's virtualenv active), from anywhere; it works in a fresh temporary directory and uses
# ports 8950 and 8951. `python bench/transcript.py docs/operations.md "## The transcript"
# --script examples/operations.sh` puts what it prints into the doc.
set -u
WORK=$(mktemp -d /tmp/chronoserve-operations-XXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
say() { echo "\$ $*"; eval "$@"; echo; }
cat > serve.toml <<'TOML'
# serve.toml
port = 8950
max-queue = 2048
models = ["random/chronos-bolt-tiny"]
log-format = "text"
TOML
printf 'ops-key-0123456789abcdef\n' > api.keys
printf 'admin-key-0123456789abcdef\n' > admin.keys
mkdir -p models && rm -rf models/tiny && cp -r "$(python -c 'from chronoserve.models.materialize import materialize; print(materialize("tiny-chronos-bolt"))')" models/tiny
say "CHRONOSERVE_DRAIN_TIMEOUT=10 chronoserve serve --config serve.toml --api-key-file api.keys --print-config | grep -v '^# [a-z-]* = (none)'"
CHRONOSERVE_DRAIN_TIMEOUT=10 chronoserve serve --config serve.toml --api-key-file api.keys --admin-key-file admin.keys \
    --model-root $WORK/models --backend torch > serve.log 2>&1 &
PID=$!
until curl -sf localhost:8950/readyz >/dev/null; do sleep 0.5; done
K="Authorization: Bearer ops-key-0123456789abcdef"
A="Authorization: Bearer admin-key-0123456789abcdef"
say "curl -s -w '\n%{http_code}\n' --json '{\"city\": \"dongsi\", \"horizon_hours\": 2}' localhost:8950/forecast"
say "curl -s -i -H '$K' -H 'X-Request-ID: order-42' --json '{\"city\": \"dongsi\", \"horizon_hours\": 2}' localhost:8950/forecast | grep -iE '^(HTTP|x-request-id)|lower_bound' | cut -c1-160"
say "curl -s -H '$K' --json '{\"target\": [3, 1, 0.5, 0.2], \"horizon_hours\": 2, \"quantile_levels\": [0.1, 0.9], \"nonnegative\": true}' localhost:8950/forecast | python -c 'import json,sys; a=json.load(sys.stdin); print(a[\"quantiles\"], a[\"lower_bound\"], a[\"clipped_values\"])'"
say "curl -s -w '\n%{http_code}\n' -H '$K' --json '{\"city\": \"dongsi\", \"model_name\": \"amazon/chronos-bolt-small\"}' localhost:8950/forecast"
say "curl -s -w '\n%{http_code}\n' -H '$K' -X POST localhost:8950/models/random%2Fchronos-2/load"
say "curl -s -w '\n%{http_code}\n' -H '$A' -X POST localhost:8950/models/random%2Fchronos-2/load"
say "curl -s -w '\n%{http_code}\n' -H '$A' --json '{\"batch_size\": 8, \"context_length\": 512, \"horizon\": 24}' localhost:8950/models/random%2Fchronos-2/warm"
say "curl -s -w '\n%{http_code}\n' -H '$A' -X POST localhost:8950/models/random%2Fchronos-2/unload"
say "curl -s -w '\n%{http_code}\n' -H '$A' -X POST localhost:8950/models/$(python -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=''))" "$WORK/models/tiny")/load"
say "curl -s -w '\n%{http_code}\n' -H '$A' -X POST localhost:8950/models/%2Fetc/load"
say "curl -s localhost:8950/v2/health/ready; echo; curl -s -H '$K' localhost:8950/v2/models/chronos-2-pm25 | cut -c1-200"
say "curl -s -H '$K' --json '{\"inputs\": [{\"name\": \"history\", \"datatype\": \"FP32\", \"shape\": [2, 4], \"data\": [[61, 58, 64, 70], [null, 12, 15, 11]]}], \"parameters\": {\"horizon\": 2, \"quantile_levels\": \"0.1,0.9\"}}' localhost:8950/v2/models/chronos-2-pm25/infer"
kill -TERM $PID; wait $PID; echo "exit: $?"
echo "--- the server's log (its readiness polls left out) ---"
grep -v '"GET /readyz" 503' serve.log
echo
echo "--- the same with --log-format json (one request) ---"
chronoserve serve --port 8951 --log-format json --default-model random/tiny-chronos-bolt --backend torch > json.log 2>&1 &
PID=$!
until curl -sf localhost:8951/readyz >/dev/null; do sleep 0.5; done
curl -s -o /dev/null -H 'X-Request-ID: j-7' --json '{"city": "tiantan", "horizon_hours": 6}' localhost:8951/forecast
kill -TERM $PID; wait $PID
grep -E 'j-7|ready:' json.log
