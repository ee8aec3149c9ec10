#!/usr/bin/env bash
# The one test command: sets up (apt packages, default model), builds, runs every test, then runs the unit tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== build (Release)"
scripts/build.sh
echo "== tests (Release)"
(cd build && ctest --output-on-failure --timeout 900)
echo "== build (ASan + UBSan)"
scripts/build.sh --sanitize
echo "== unit tests (ASan + UBSan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -L unit --timeout 900)
