#!/usr/bin/env bash
# Training throughput, `mlaforge train` vs the equivalent PyTorch loop (bench/train_bench.py, see its
# docstring and bench/README.md), with the project's Python environment and build:
#   bench/train_bench.sh            # SmolLM2-135M converted to MLA (a few minutes on 2 CPU cores)
#   bench/train_bench.sh --quick    # stories260K converted to MLA (seconds)
#   bench/train_bench.sh --threads 2 --steps 10 --configs all
# Environment: MLAFORGE_BUILD (default build/), PY (default ~/.cache/mlaforge/venv/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
PY="${PY:-$HOME/.cache/mlaforge/venv/bin/python}"
exec "$PY" "$ROOT/bench/train_bench.py" --bin "$BUILD/bin/mlaforge" --python "$PY" "$@"
