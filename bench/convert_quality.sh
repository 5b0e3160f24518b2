#!/usr/bin/env bash
# Conversion quality, ours vs TransMLA's own converter, on the same model, calibration and evaluation tokens
# (issue 9; bench/README.md "Conversion quality"). Prints one markdown table (+ our ablation ladder).
#
#   bench/convert_quality.sh [--models SmolLM2-135M,stories260K] [--no-ablations] [--threads N]
#
# TRANSMLA_DIR=/path/to/TransMLA (a checkout of github.com/fxmeng/TransMLA at 9c0d254) adds TransMLA's
# columns: a bench-only venv with transformers 4.52.4 is made once ($MLAFORGE_BENCH_VENV, default
# ~/.cache/mlaforge/bench-transmla-venv; it reuses the main venv's torch through a .pth file). Without it the
# table shows our figures next to TransMLA's last recorded ones. Needs build/bin/mlaforge (MLAFORGE_BIN)
# and ../shared/assets (MLAFORGE_ASSETS); model folders are cached in ~/.cache/mlaforge/bench.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MAIN_VENV="${MLAFORGE_VENV:-$HOME/.cache/mlaforge/venv}"
BIN="${MLAFORGE_BIN:-$ROOT/build/bin/mlaforge}"
ASSETS="${MLAFORGE_ASSETS:-$ROOT/../shared/assets}"
PY="$MAIN_VENV/bin/python"
[ -x "$BIN" ] || { echo "no mlaforge binary at $BIN (build first, or set MLAFORGE_BIN)" >&2; exit 2; }
[ -d "$ASSETS" ] || { echo "no assets folder at $ASSETS (set MLAFORGE_ASSETS)" >&2; exit 2; }
ARGS=()
if [ -n "${TRANSMLA_DIR:-}" ]; then
  [ -f "$TRANSMLA_DIR/transmla/transmla/converter.py" ] ||
    { echo "TRANSMLA_DIR=$TRANSMLA_DIR has no transmla/transmla/converter.py" >&2; exit 2; }
  BV="${MLAFORGE_BENCH_VENV:-$HOME/.cache/mlaforge/bench-transmla-venv}"
  if ! "$BV/bin/python" -c 'import sys, transformers; sys.exit(transformers.__version__ != "4.52.4")' 2>/dev/null; then
    echo "making the TransMLA bench venv at $BV (transformers 4.52.4, torch from $MAIN_VENV)" >&2
    "$PY" -m venv "$BV"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    BSITE="$("$BV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$SITE" > "$BSITE/mlaforge_main_venv.pth"  # appended after the venv's own packages: 4.52.4 wins
    "$BV/bin/pip" install -q transformers==4.52.4 datasets tqdm accelerate
  fi
  PY="$BV/bin/python"
  ARGS=(--transmla "$TRANSMLA_DIR")
fi
exec "$PY" "$ROOT/bench/convert_quality.py" --mlaforge "$BIN" --assets "$ASSETS" "${ARGS[@]}" "$@"
