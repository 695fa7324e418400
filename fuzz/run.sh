#!/usr/bin/env bash
# Builds the libFuzzer targets standalone with clang (ASan + UBSan) and runs each for a bounded
# time on a generated seed corpus. Usage: fuzz/run.sh [seconds per target, default 60]
# Env: CLANG (default clang++-19), FUZZ_OUT (default build-fuzz/ under the repository root),
# FUZZ_JOBS (parallel fuzzing jobs per target, default 1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
secs="${1:-60}"
cxx="${CLANG:-clang++-19}"
out="${FUZZ_OUT:-$root/build-fuzz}"
jobs="${FUZZ_JOBS:-1}"
mkdir -p "$out"

flags=(-std=c++23 -O1 -g -fno-omit-frame-pointer -I "$root/src")
san=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
libs=(-lfmt)
core=("$root/src/core/dtype.cc" "$root/src/core/status.cc" "$root/src/core/mmap_file.cc")

echo "== building fuzz targets with $cxx into $out"
"$cxx" "${flags[@]}" "${san[@]}" "$here/fuzz_gguf.cc" "$root/src/model/gguf.cc" "$root/src/model/config.cc" \
  "${core[@]}" "${libs[@]}" -o "$out/fuzz_gguf"
"$cxx" "${flags[@]}" "${san[@]}" "$here/fuzz_safetensors.cc" "$root/src/model/safetensors.cc" \
  "${core[@]}" "${libs[@]}" -o "$out/fuzz_safetensors"
# The seed generator is an ordinary program (no fuzzer main).
"$cxx" "${flags[@]}" -fsanitize=address "$here/make_seeds.cc" "$root/src/model/gguf.cc" "$root/src/model/config.cc" \
  "${core[@]}" "${libs[@]}" -o "$out/make_seeds"

mkdir -p "$out/corpus/gguf" "$out/corpus/safetensors"
"$out/make_seeds" "$out/corpus/gguf" "$out/corpus/safetensors"
# Heads of real files give the fuzzer realistic metadata (kept small: libFuzzer's -max_len).
for f in "$root"/tests/data/vocab-tests/*.gguf; do
  [ -f "$f" ] && head -c 8192 "$f" > "$out/corpus/gguf/head-$(basename "$f")"
done

status=0
for t in gguf safetensors; do
  echo "== fuzzing $t for ${secs}s"
  mkdir -p "$out/artifacts/$t"
  # -jobs writes fuzz-N.log into the current folder: keep them in $out.
  if ! (cd "$out" && "$out/fuzz_$t" "$out/corpus/$t" -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
      -jobs="$jobs" -workers="$jobs" -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1); then
    echo "!! fuzz_$t found a failure; reproducer in $out/artifacts/$t/"
    status=1
  fi
done
exit $status
