#!/usr/bin/env bash
# Builds fuzz/fuzz_request.cc standalone with clang + libFuzzer + ASan/UBSan and runs it.
# Usage: fuzz/run_request_fuzz.sh [max_total_time_seconds=60] [extra libFuzzer args...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
CXX="${CXX:-clang++-19}"
out="${FUZZ_OUT:-$root/build-fuzz}"
mkdir -p "$out/corpus_request"
"$CXX" -std=c++23 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root/src" "$root/src/server/request_parse.cc" "$root/fuzz/fuzz_request.cc" \
  -lfmt -o "$out/fuzz_request"
# Seed corpus: a few valid requests of each endpoint, so mutations start from deep paths.
seed() { printf '%s' "$2" > "$out/corpus_request/$1"; }
seed c1 '{"model":"tiny-coder-target","prompt":"def f(","max_tokens":8,"stop":["\n"],"logprobs":2,"n":2,"seed":1,"logit_bias":{"3":-1}}'
seed c2 '{"prompt":[[1,2],[3]],"stream":true,"stream_options":{"include_usage":true},"echo":true}'
seed h1 '{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"logprobs":true,"top_logprobs":2,"response_format":{"type":"text"},"tools":[]}'
seed m1 '{"model":"tiny-coder-target","max_tokens":5,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}],"stop_sequences":["x"],"metadata":{"user_id":"u"},"thinking":{"type":"disabled"}}'
seed t1 '{"content":"abc","add_special":true,"with_pieces":true,"tokens":[1,2,3]}'
seed f1 '{"model":"tiny-coder-target","prompt":"def f(","suffix":"\n    return x\n","max_tokens":8,"stream":true,"priority":"chat","user":"ed"}'
seed f2 '{"input_prefix":"a","input_suffix":"b","input_extra":[{"filename":"x.py","text":"y"}],"prompt":"c","n_predict":-1,"t_max_predict_ms":100,"n_indent":4,"seed":-1,"samplers":["top_k"],"id_slot":0,"cache_prompt":true,"n_probs":0}'
seed f3 '{"model":"tiny-coder-target","prompt":"a","suffix":"b","min_tokens":0,"random_seed":3,"stop":"\n","temperature":0.2,"top_p":0.9}'
exec "$out/fuzz_request" -max_total_time="$secs" -max_len=4096 -timeout=10 "$@" "$out/corpus_request"
