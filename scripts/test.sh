#!/usr/bin/env bash
# Install, build, and run every test: unit and model tests (ctest), end-to-end tests of the
# server through the official npm SDKs, and bounded fuzzing of the file and request parsers.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
MERLIN_FUZZ_DEPS=1 "$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
echo "== unit, model and engine tests"
(cd "$root/build" && ctest --output-on-failure -j"$(nproc)" --timeout 900)
echo "== end-to-end tests (openai and @anthropic-ai/sdk against merlin serve)"
"$root/tests/e2e/run.sh" "$root/build/merlin"
echo "== fuzzing (bounded)"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
"$root/fuzz/run.sh" "$FUZZ_SECONDS"
[ -x "$root/fuzz/run_request_fuzz.sh" ] && "$root/fuzz/run_request_fuzz.sh" "$FUZZ_SECONDS"
echo "== all tests passed"
