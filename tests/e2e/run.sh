#!/usr/bin/env bash
# End-to-end tests of `merlin serve` through the official OpenAI and Anthropic SDKs.
# Usage: tests/e2e/run.sh path/to/merlin [node --test args...]
# Installs the pinned npm dependencies when missing; builds nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:?usage: $0 path/to/merlin}"
shift
bin="$(realpath "$bin")"
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
cd "$here"
if [ ! -d node_modules/openai ] || [ ! -d node_modules/@anthropic-ai/sdk ]; then
  npm ci --no-audit --no-fund
fi
export MERLIN_BIN="$bin"
export MERLIN_MODEL="${MERLIN_MODEL:-$(realpath "$here/../../models/tiny-coder-target")}"
exec node --test --test-concurrency=1 "$@" "$here"/*.test.mjs
