#!/usr/bin/env bash
# Install, build, and run Merlin's main job on the shipped model: code completion with
# tiny-coder-target, greedy, then the same with the draft model speculating.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
m="$root/models/tiny-coder-target"
echo "== merlin run (greedy)"
"$root/build/merlin" run -m "$m" -p $'def quicksort(arr):\n    ' -n 96 --temp 0
echo "== merlin run with the draft model speculating (same output, fewer target passes)"
"$root/build/merlin" run -m "$m" --draft "$root/models/tiny-coder-draft" -p $'def quicksort(arr):\n    ' -n 96 --temp 0
echo "== fill-in-the-middle"
"$root/build/merlin" run -m "$m" -p $'<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))<fim_middle>' -n 32 --temp 0
