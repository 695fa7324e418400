#!/usr/bin/env bash
# Installs what Merlin needs to build, test and run on Debian 12 (Debian packages only; the
# end-to-end tests also install their pinned npm packages from tests/e2e/package-lock.json).
set -euo pipefail
pkgs=(build-essential cmake pkg-config git ca-certificates
      libcpp-httplib-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev libsentencepiece-dev sentencepiece
      libspdlog-dev libfmt-dev libcli11-dev libxxhash-dev libgtest-dev python3 curl
      libopenblas0-openmp)  # run time only: `merlin bench` loads it for its sgemm baseline
fuzz=(clang-19 libclang-rt-19-dev)
missing=()
# Node.js and npm for the end-to-end tests: Debian's, unless the machine already has them
# (a Node installed another way conflicts with Debian's npm package).
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
for p in "${pkgs[@]}" ${MERLIN_FUZZ_DEPS:+"${fuzz[@]}"}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all Debian packages present"
fi
