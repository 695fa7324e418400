#!/usr/bin/env bash
# Quantized generation figures for docs/benchmarks.md (issue 3): llama-3.2-1b and llama-3.1-8b
# shapes (random weights from `merlin synth`) as bf16 and converted to q8_0, q4_k_m and q4_0,
# `merlin bench -t 2`. Each tg run is compared with read-bandwidth probes taken right before and
# after it (the bench does this itself). Needs ~60 GB of disk and ~20 GB of RAM for the 8B shape.
#   bench/quant_bench.sh [1b|8b|all]   (WORK=/tmp by default)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/merlin"
work="${WORK:-/tmp}"
which="${1:-all}"

prepare() {  # preset dir prefix
  local preset=$1 dir=$2 prefix=$3
  [ -f "$dir/model.safetensors" ] || "$bin" synth --preset "$preset" -o "$dir"
  for t in q8_0 q4_k_m q4_0; do
    [ -f "$prefix-$t.gguf" ] || "$bin" convert "$dir" "$prefix-$t.gguf" --type "$t"
  done
}

run() {  # label model pp tg reps
  echo "== $1"
  "$bin" bench -m "$2" -t 2 -p "$3" -n "$4" -r "$5" 2>/dev/null | tail -2
}

if [ "$which" = 1b ] || [ "$which" = all ]; then
  prepare llama-3.2-1b "$work/llama1b" "$work/l1b"
  # bf16 straight from the HF folder: the same bf16 weights and packed kernels as a bf16 GGUF.
  for t in bf16 q8_0 q4_k_m q4_0; do
    m="$work/l1b-$t.gguf"; [ "$t" = bf16 ] && m="$work/llama1b"
    run "1B $t" "$m" 512 128 2
  done
fi
if [ "$which" = 8b ] || [ "$which" = all ]; then
  prepare llama-3.1-8b "$work/llama8b" "$work/l8b"
  # bf16 and q4_0 back to back twice, for the q4_0 / bf16 ratio under the same conditions.
  for pass in 1 2; do
    run "8B bf16 (pass $pass)" "$work/llama8b" 64 32 2
    run "8B q4_0 (pass $pass)" "$work/l8b-q4_0.gguf" 64 32 2
  done
  for t in q8_0 q4_k_m; do run "8B $t" "$work/l8b-$t.gguf" 64 32 2; done
fi
