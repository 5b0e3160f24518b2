#!/usr/bin/env bash
# Builds everything and runs the whole test suite (what CI runs). Extra arguments go to ctest,
# e.g. scripts/test.sh -R Golden   or   scripts/test.sh -L gpu   (GPU-only tests, on a GPU machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
"$ROOT/scripts/setup.sh" --tests
cd "$BUILD"
if [ $# -eq 0 ]; then
  set -- -LE gpu
fi
ctest --output-on-failure -j "$(nproc)" --timeout 1200 "$@"
