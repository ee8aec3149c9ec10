#!/usr/bin/env bash
# Configures and builds leanrotor into build/ (Release), or build-asan/ with --sanitize (ASan + UBSan).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; extra=()
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan; extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DLEANROTOR_SANITIZE=ON -DLEANROTOR_BUILD_BENCH=OFF)
fi
cmake -S . -B "$dir" -G Ninja "${extra[@]}" >/dev/null
cmake --build "$dir" --parallel "$(nproc)"
