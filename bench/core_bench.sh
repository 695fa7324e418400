#!/usr/bin/env bash
# Core-engine and speculative-decoding figures for docs/benchmarks.md (2 threads).
# Usage: bench/core_bench.sh [path to a synth llama-3.2-1b folder; made if missing]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/merlin"
m1b="${1:-/tmp/merlin-llama-3.2-1b}"
[ -f "$m1b/model.safetensors" ] || "$bin" synth --preset llama-3.2-1b -o "$m1b" 2>/dev/null
load() { echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
tc="$root/models/tiny-coder-target"
load
for prec in f32 bf16; do
  "$bin" bench -m "$tc" -t 2 --precision "$prec" --json 2>/dev/null
  load
done
for prec in f32 bf16; do
  "$bin" bench -m "$m1b" -t 2 -r 3 --precision "$prec" --json 2>/dev/null
  load
done
# Speculative decoding: (a) code continuation with the draft, (b) code edit with prompt lookup,
# and both at concurrency 4 (several sequences speculating inside one batch).
"$bin" bench -m "$tc" -t 2 -p 16 -n 128 -r 1 --draft "$root/models/tiny-coder-draft" --spec-task code --json 2>/dev/null
load
"$bin" bench -m "$tc" -t 2 -p 16 -n 128 -r 1 --lookup --spec-task edit --json 2>/dev/null
load
"$bin" bench -m "$tc" -t 2 -p 16 -n 128 -r 1 --draft "$root/models/tiny-coder-draft" --lookup --spec-task edit --json 2>/dev/null
load
"$bin" bench -m "$tc" -t 2 -p 16 -n 128 -r 1 --draft "$root/models/tiny-coder-draft" --spec-task code --spec-concurrency 4 --json 2>/dev/null
load
"$bin" bench -m "$tc" -t 2 -p 16 -n 128 -r 1 --lookup --spec-task edit --spec-concurrency 4 --json 2>/dev/null
load
