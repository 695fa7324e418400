#!/usr/bin/env bash
# Server benchmarks (docs/benchmarks.md, "Server"): aggregate generation tokens/s and TTFT at
# concurrency 1/4/16/64, repeated-prefix TTFT, and 256 concurrent streaming connections.
# Usage: bench/serve_bench.sh MODEL_DIR [gen_len] [prompt_len] [concurrencies...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/merlin"
model="${1:?model dir}"
gen="${2:-64}"
plen="${3:-128}"
shift 3 || true
concs=("$@")
[ ${#concs[@]} -eq 0 ] && concs=(1 4 16 64)
port=$((18000 + RANDOM % 1000))
"$bin" serve -m "$model" --port "$port" --parallel 64 --ctx 4096 --http-threads 320 ${SERVE_ARGS:-} >/tmp/merlin-serve-bench.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for i in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.5
done
url="http://127.0.0.1:$port"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in "${concs[@]}"; do
  n=$((c < 4 ? 4 : c * 2))
  "$bin" bench-serve --url "$url" --concurrency "$c" --num "$n" --prompt-len "$plen" --gen-len "$gen" --stream \
    --api completions --json | python3 -c "
import json,sys; j=json.load(sys.stdin)
print(json.dumps({'concurrency': $c, **{k: j[k] for k in j if not isinstance(j[k], (list, dict))}, **{k: j[k] for k in ('ttft_ms','itl_ms','e2e_ms') if k in j}}))"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${SKIP_PREFIX:-}" ]; then
  # The same 2,000-token prompt twice (same seed => same synthetic prompt): cold vs cached TTFT.
  for run in cold cached; do
    "$bin" bench-serve --url "$url" --concurrency 1 --num 1 --prompt-len 2000 --gen-len 4 --stream --seed 777 \
      --api completions --json | python3 -c "
import json,sys; j=json.load(sys.stdin); print(json.dumps({'prefix_2000': '$run', 'ttft_ms': j['ttft_ms']['p50'], 'failed': j['failed']}))"
  done
  curl -s "$url/metrics" | grep -E '^merlin_prefix_cache_(hits|queries)_total'
fi
if [ -n "${CONN256:-}" ]; then
  # 256 concurrent streaming connections held at once (64 decode together, the rest queue).
  "$bin" bench-serve --url "$url" --concurrency 256 --num 256 --prompt-len 32 --gen-len 16 --stream --api completions \
    --timeout 600 --json | python3 -c "
import json,sys; j=json.load(sys.stdin); print(json.dumps({'connections': 256, 'completed': j['completed'], 'failed': j['failed'], 'ttft_p95_ms': j['ttft_ms']['p95'], 'e2e_p95_ms': j['e2e_ms']['p95']}))"
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
