#!/usr/bin/env bash
# glibc malloc vs tcmalloc for CPU training steps, side by side in one script (same binary, same model,
# same threads): the figure behind linking tcmalloc_minimal into mlaforge.
#   bench/malloc_bench.sh [MODEL] [steps]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
MODEL="${1:-$(cat "$BUILD/default_model.txt")}"
STEPS="${2:-12}"
TCMALLOC="$(ldconfig -p | awk '/libtcmalloc_minimal.so.4 /{print $NF; exit}')"
BIN="$BUILD/bench/bench_torch_step_bench"
echo "model: $MODEL   threads: ${MLAFORGE_NUM_THREADS:-$(nproc)}   steps: $STEPS"
glibc=$("$BIN" "$MODEL" "$STEPS")
echo "glibc malloc : $glibc"
tc=$(LD_PRELOAD="$TCMALLOC" "$BIN" "$MODEL" "$STEPS")
echo "tcmalloc     : $tc"
g=$(echo "$glibc" | sed -E 's/.*mean ([0-9.]+) s.*/\1/')
t=$(echo "$tc" | sed -E 's/.*mean ([0-9.]+) s.*/\1/')
python3 -c "print(f'mean step time ratio glibc/tcmalloc = {float($g)/float($t):.2f}x')"
