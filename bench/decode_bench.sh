#!/usr/bin/env bash
# Decode throughput of a GQA model and its MLA conversion side by side (bench/torch_decode_bench.cpp): KV
# bytes per token, tokens/s at several context lengths and batch sizes, MLA/GQA ratio, and the fraction of
# the memory-bandwidth bound each configuration reaches. See bench/README.md.
#   bench/decode_bench.sh                          # SmolLM2-135M (the default model) vs its conversion
#   bench/decode_bench.sh --mla DIR                # an MLA folder you already have (GQA: the default model)
#   bench/decode_bench.sh --gqa MODEL --mla DIR    # any pair
#   bench/decode_bench.sh --shape 1b               # synthetic Llama-3.2-1B shape (random bf16 weights) + conversion
#   bench/decode_bench.sh --device cuda            # on GPU 0 (bf16; cache cap from nvidia-smi)
# Options: --contexts 1024,4096,16384,32768  --batches 1,8,32  --steps 4  --warmup 1  --threads N
#   (default $MLAFORGE_NUM_THREADS, else 2)  --dtype float32|bfloat16 (default float32 on CPU, bfloat16 on
#   CUDA)  --max-cache-gb X (default: 40% of MemAvailable on CPU, 60% of the GPU's free memory on CUDA)
#   --work DIR (scratch for conversions, default $TMPDIR/mlaforge-decode-bench; never the repository)
#   --rope-dim 64 --kv-lora-rank 128 (conversion of the default model; --shape 1b uses 64 / 512).
# Environment: MLAFORGE_BUILD (build/), MLAFORGE_BIN ($MLAFORGE_BUILD/bin/mlaforge), PY (the project venv).
# The converted folder is kept in --work and reused by later runs (delete it to reconvert).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
BIN="${MLAFORGE_BIN:-$BUILD/bin/mlaforge}"
BENCH="$BUILD/bench/bench_torch_decode_bench"
PY="${PY:-$HOME/.cache/mlaforge/venv/bin/python}"
ASSETS="$ROOT/../shared/assets"
GQA="" MLA="" SHAPE="" DEVICE=cpu DTYPE="" THREADS="${MLAFORGE_NUM_THREADS:-2}" CAP=""
CONTEXTS=1024,4096,16384,32768 BATCHES=1,8,32 STEPS=4 WARMUP=1 ROPE_DIM=64 KV_LORA_RANK=""
WORK="${TMPDIR:-/tmp}/mlaforge-decode-bench"
while [ $# -gt 0 ]; do
  case "$1" in
    --gqa) GQA="$2"; shift 2 ;;
    --mla) MLA="$2"; shift 2 ;;
    --shape) SHAPE="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --max-cache-gb) CAP="$2"; shift 2 ;;
    --contexts) CONTEXTS="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --rope-dim) ROPE_DIM="$2"; shift 2 ;;
    --kv-lora-rank) KV_LORA_RANK="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    *) echo "decode_bench: unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "decode_bench: no mlaforge binary at $BIN (set MLAFORGE_BIN or MLAFORGE_BUILD)" >&2; exit 1; }
[ -x "$BENCH" ] || { echo "decode_bench: no $BENCH (cmake --build $BUILD --target bench_torch_decode_bench)" >&2; exit 1; }
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$ROOT"/*) echo "decode_bench: --work must be outside the repository" >&2; exit 1 ;; esac

# convert SRC OUT RANK: an exact-mode conversion with sequential calibration on TinyStories, reused when
# OUT is complete.
convert() {
  local src="$1" out="$2" rank="$3" calib="$ASSETS/text/tinystories_val_part1.txt"
  if [ -f "$out/.complete" ]; then echo "== reusing $out" >&2; return; fi
  [ -f "$calib" ] || { echo "decode_bench: $calib not found (../shared/assets) for the conversion" >&2; exit 1; }
  rm -rf "$out"
  echo "== converting $src -> $out (--rope-dim $ROPE_DIM --kv-lora-rank $rank)" >&2
  "$BIN" --threads "$THREADS" convert "$src" "$out" --rope-dim "$ROPE_DIM" --kv-lora-rank "$rank" \
    --calib "$calib" --calib-docs 32 > "$WORK/convert.log" 2>&1 ||
    { tail -5 "$WORK/convert.log" >&2; exit 1; }
  touch "$out/.complete"
}

if [ -n "$SHAPE" ]; then
  case "$SHAPE" in
    1b) name=llama-3.2-1b ;;
    8b) name=llama-3-8b ;;
    *) echo "decode_bench: unknown --shape $SHAPE (1b, 8b)" >&2; exit 2 ;;
  esac
  GQA="$WORK/synth-$name"
  if [ ! -f "$GQA/.complete" ]; then
    "$PY" "$ROOT/bench/make_synthetic_checkpoint.py" --shape "$name" --out "$GQA" --assets "$ASSETS" --force >&2
    touch "$GQA/.complete"
  fi
  [ -n "$MLA" ] || { MLA="$WORK/synth-$name-mla"; convert "$GQA" "$MLA" "${KV_LORA_RANK:-512}"; }
else
  if [ -z "$GQA" ]; then
    GQA="${MLAFORGE_DEFAULT_MODEL:-}"
    for f in "$BUILD/default_model.txt" "$ROOT/build/default_model.txt"; do
      if [ -z "$GQA" ] && [ -f "$f" ]; then GQA="$(cat "$f")"; fi
    done
    [ -n "$GQA" ] || { echo "decode_bench: no default model (build/default_model.txt); pass --gqa" >&2; exit 1; }
  fi
  [ -n "$MLA" ] || { MLA="$WORK/$(basename "${GQA%.*}")-mla"; convert "$GQA" "$MLA" "${KV_LORA_RANK:-128}"; }
fi

if [ -z "$CAP" ] && [ "$DEVICE" != cpu ]; then
  free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits 2> /dev/null | head -1 || true)
  [ -n "$free_mib" ] || { echo "decode_bench: nvidia-smi found no GPU; pass --max-cache-gb" >&2; exit 1; }
  CAP=$(awk -v m="$free_mib" 'BEGIN { printf "%.1f", 0.6 * m / 1024 }')
fi
args=(--gqa "$GQA" --mla "$MLA" --device "$DEVICE" --threads "$THREADS" --contexts "$CONTEXTS"
      --batches "$BATCHES" --steps "$STEPS" --warmup "$WARMUP" --json "$WORK/results.json")
if [ -n "$DTYPE" ]; then args+=(--dtype "$DTYPE"); fi
if [ -n "$CAP" ]; then args+=(--max-cache-gb "$CAP"); fi
if [ "$DEVICE" != cpu ]; then
  echo "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
fi
echo "load average before: $(uptime | sed 's/.*load average: //')"
echo "== $BENCH ${args[*]}" >&2
"$BENCH" "${args[@]}"
echo
echo "load average after: $(uptime | sed 's/.*load average: //'); JSON: $WORK/results.json"
