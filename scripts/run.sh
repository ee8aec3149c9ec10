#!/usr/bin/env bash
# The one main-job command: sets up (apt packages, default model), builds, and runs the main job on the default model.
# The main job grows with the product; today it is the most complete end-to-end path that exists (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/leanrotor --help
