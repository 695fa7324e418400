#!/usr/bin/env bash
# Soak run (docs/benchmarks.md, "Soak run"): starts `merlin serve` on tiny-coder (target + draft)
# on a free port, runs `merlin bench-soak` against it for DURATION minutes, stops the server with
# SIGTERM, and leaves everything under OUT_DIR:
#   soak.txt     the final table (bench-soak's stdout)
#   soak.log     progress lines, one per window, and unexpected errors as they happen (stderr)
#   soak.json    the same results as JSON (bench-soak --json)
#   server.log   the server's log
# Usage: bench/soak.sh [DURATION_MIN=60] [OUT_DIR=soak-out/YYYYmmdd-HHMMSS] [extra bench-soak flags...]
# Environment: MERLIN (binary, default build/merlin), MODEL, DRAFT (empty: no draft),
#   WINDOW_MIN (default 5; 1 for runs shorter than 10 minutes), SERVE_ARGS (extra serve flags).
# Exit status: bench-soak's (0 when every goal is met), or 3 when the server failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${MERLIN:-$root/build/merlin}"
duration="${1:-60}"
out="${2:-$root/soak-out/$(date +%Y%m%d-%H%M%S)}"
shift 2 2>/dev/null || shift $#
model="${MODEL:-$root/models/tiny-coder-target}"
draft="${DRAFT-$root/models/tiny-coder-draft}"
if [ -z "${WINDOW_MIN:-}" ]; then
  if awk "BEGIN{exit !($duration < 10)}"; then WINDOW_MIN=1; else WINDOW_MIN=5; fi
fi
mkdir -p "$out"
[ -x "$bin" ] || { echo "soak.sh: no merlin binary at $bin (set MERLIN=)" >&2; exit 3; }

serve_args=(serve -m "$model" --port 0 --parallel 32 --ctx 4096)
[ -n "$draft" ] && serve_args+=(--draft "$draft")
# shellcheck disable=SC2206
serve_args+=(${SERVE_ARGS:-})
"$bin" "${serve_args[@]}" >"$out/server.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
port=""
for _ in $(seq 1 600); do
  port="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out/server.log" | head -1)"
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
if [ -z "$port" ]; then
  echo "soak.sh: the server did not start; see $out/server.log" >&2
  tail -5 "$out/server.log" >&2
  exit 3
fi
url="http://127.0.0.1:$port"
{
  echo "soak.sh: $(date -Is) commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (tree modified)')"
  echo "soak.sh: $bin ${serve_args[*]} (pid $pid, $url)"
  echo "soak.sh: load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
} | tee "$out/soak.log" >&2

"$bin" bench-soak --url "$url" --duration-min "$duration" --window-min "$WINDOW_MIN" --chat-streams 16 \
  --fim-interval-ms 150 --server-pid "$pid" --json "$out/soak.json" "$@" \
  > >(tee "$out/soak.txt") 2> >(tee -a "$out/soak.log" >&2)
rc=$?
echo "soak.sh: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/soak.log" >&2

kill -TERM $pid 2>/dev/null
wait $pid
src=$?
trap - EXIT
errors=$(grep -ci 'error' "$out/server.log")
echo "soak.sh: server exited with $src; $errors log lines mention 'error' (see $out/server.log)" | tee -a "$out/soak.log" >&2
[ "$src" -ne 0 ] && [ "$rc" -eq 0 ] && rc=3
echo "soak.sh: results in $out (bench-soak exit $rc)" >&2
exit $rc
