#!/usr/bin/env bash
# Conversion time and peak host memory of `mlaforge convert` on synthetic checkpoints with the exact
# shapes of Llama-3.2-1B and Llama-3-8B (random bf16 weights, real configs, sharded safetensors, the real
# Llama-3 tokenizer; bench/make_synthetic_checkpoint.py), on CPU and, when a CUDA device is present, on
# one GPU. Prints a table with the peak RSS against the checkpoint's size on disk: a streamed conversion
# must stay well below it.
#   bench/convert_bench.sh                     # both shapes (the 8B one writes 16 GB, then ~16 GB more)
#   bench/convert_bench.sh --shapes 1b         # Llama-3.2-1B shape only
#   bench/convert_bench.sh --shapes 8b --clean # delete the synthetic checkpoints afterwards
# Options: --shapes 1b,8b  --work DIR (scratch, default $TMPDIR/mlaforge-convert-bench; never the
#   repository)  --clean (remove the generated checkpoints at the end; converted outputs are always
#   removed after each run)  --no-gpu.
# Environment (defaults): MLAFORGE_BIN ($MLAFORGE_BUILD/bin/mlaforge, MLAFORGE_BUILD = build/), PY
#   (~/.cache/mlaforge/venv/bin/python), CALIB_DOCS (8), CALIB_LEN (256), KV_LORA_RANK (512),
#   ROPE_DIM (64), EVAL_DOCS (0: no perplexity; N > 0 scores N held-out documents before and after),
#   THREADS (the converter's default), SHARD_SIZE (the converter's --shard-size in GiB; its default),
#   EXTRA_ARGS (appended to the convert command line).
# Memory is the converter's own peak RSS (getrusage ru_maxrss, reported in its --json); a sampler also
# records VmRSS every 0.5 s to $WORK/<shape>-<device>.rss.tsv (seconds, RSS KiB[, GPU MiB used]) to show
# when the peak happens. Stage times come from the converter's log lines (tokenized ... (t s), converted
# and wrote ... (t s)).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MLAFORGE_BIN:-${MLAFORGE_BUILD:-$ROOT/build}/bin/mlaforge}"
PY="${PY:-$HOME/.cache/mlaforge/venv/bin/python}"
ASSETS="$ROOT/../shared/assets"
CALIB_DOCS="${CALIB_DOCS:-8}" CALIB_LEN="${CALIB_LEN:-256}" KV_LORA_RANK="${KV_LORA_RANK:-512}"
ROPE_DIM="${ROPE_DIM:-64}" EVAL_DOCS="${EVAL_DOCS:-0}" THREADS="${THREADS:-}" SHARD_SIZE="${SHARD_SIZE:-}"
SHAPES="1b,8b" WORK="${TMPDIR:-/tmp}/mlaforge-convert-bench" CLEAN=0 GPU=1
while [ $# -gt 0 ]; do
  case "$1" in
    --shapes) SHAPES="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --clean) CLEAN=1; shift ;;
    --no-gpu) GPU=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "convert_bench: no mlaforge binary at $BIN (set MLAFORGE_BIN or MLAFORGE_BUILD)" >&2; exit 1; }
TXT="$ASSETS/text/tinystories_val_part1.txt"
[ -f "$TXT" ] || { echo "convert_bench: $TXT not found (../shared/assets)" >&2; exit 1; }
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$ROOT"/*) echo "convert_bench: --work must be outside the repository" >&2; exit 1 ;; esac

# Calibration text: TinyStories paragraphs are ~60 tokens, so consecutive paragraphs are joined into
# documents of at least 1,500 characters (~350 Llama-3 tokens): every calibration document then fills
# CALIB_LEN = 256 tokens, and the default 8 x 256 = 2,048 tokens exceed the 2 n_kv d = 1,024 key/value
# dimensions whose PCA the conversion computes (fewer tokens than that would make the PCA rank-deficient).
CALIB="$WORK/calib.txt"
awk 'BEGIN { RS = ""; ORS = "" } { doc = doc (doc == "" ? "" : "\n") $0 }
     length(doc) >= 1500 { print doc "\n\n"; doc = "" }' "$TXT" > "$CALIB"

gpu_available() {
  [ "$GPU" = 1 ] && command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L 2> /dev/null | grep -q GPU
}

# Seconds since a `date +%s.%N` stamp.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# run_one SHAPE DIR DEVICE: one conversion, sampled; appends a JSON line to $RESULTS.
run_one() {
  local shape="$1" src="$2" device="$3" out="$WORK/out-$1-$3" tag="$1-$3"
  local trace="$WORK/$tag.rss.tsv" json="$WORK/$tag.json" log="$WORK/$tag.log"
  rm -rf "$out"
  local args=(convert "$src" "$out" --device "$device" --calib "$CALIB" --calib-docs "$CALIB_DOCS"
              --calib-len "$CALIB_LEN" --kv-lora-rank "$KV_LORA_RANK" --rope-dim "$ROPE_DIM" --json)
  if [ "$EVAL_DOCS" -gt 0 ]; then
    args+=(--eval "$CALIB" --eval-docs "$EVAL_DOCS" --eval-len "$CALIB_LEN" --calib-skip "$EVAL_DOCS")
  fi
  if [ -n "$SHARD_SIZE" ]; then args+=(--shard-size "$SHARD_SIZE"); fi
  # shellcheck disable=SC2206
  if [ -n "${EXTRA_ARGS:-}" ]; then args+=(${EXTRA_ARGS}); fi
  local global=()
  if [ -n "$THREADS" ]; then global=(--threads "$THREADS"); fi
  echo "== $shape on $device: $BIN ${global[*]} ${args[*]}"
  local t0 pid rc=0
  t0=$(date +%s.%N)
  "$BIN" "${global[@]}" "${args[@]}" > "$json" 2> "$log" &
  pid=$!
  : > "$trace"
  while kill -0 "$pid" 2> /dev/null; do
    local rss gpu=""
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2> /dev/null || true)
    if [ "$device" != cpu ]; then
      gpu=$'\t'$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2> /dev/null | head -1)
    fi
    if [ -n "$rss" ]; then printf '%s\t%s%s\n' "$(since "$t0")" "$rss" "$gpu" >> "$trace"; fi
    sleep 0.5
  done
  wait "$pid" || rc=$?
  local wall
  wall=$(since "$t0")
  if [ "$rc" != 0 ]; then
    echo "convert_bench: $shape on $device failed (exit $rc); log: $log" >&2
    tail -5 "$log" >&2
    rm -rf "$out"
    return 1
  fi
  "$PY" - "$shape" "$device" "$src" "$json" "$log" "$trace" "$wall" "$out" >> "$RESULTS" <<'PYEOF'
import glob, json, os, re, sys
shape, device, src, jpath, lpath, tpath, wall, out = sys.argv[1:]
out_bytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(out, "*.safetensors")))
j = json.load(open(jpath))
log = open(lpath).read()
ckpt = sum(os.path.getsize(f) for f in glob.glob(os.path.join(src, "*.safetensors")))
cfg = json.load(open(os.path.join(src, "config.json")))
tok = re.search(r"tokenized \d+ calibration documents \(([\d.]+) s\)", log)
done = re.search(r"converted and wrote .* \(([\d.]+) s\)", log)
trace = [l.split("\t") for l in open(tpath).read().splitlines() if l.strip()]
peak_at = max(trace, key=lambda r: int(r[1])) if trace else None
gpu = [int(r[2]) for r in trace if len(r) > 2 and r[2].strip().isdigit()]
print(json.dumps({
    "shape": shape, "device": device, "layers": cfg["num_hidden_layers"],
    "checkpoint_bytes": ckpt, "output_bytes": int(out_bytes), "wall_s": float(wall),
    "seconds": j["seconds"], "peak_rss_bytes": j["peak_rss_bytes"],
    "load_tokenize_s": float(tok.group(1)) if tok else None,
    "layers_write_s": float(done.group(1)) - float(tok.group(1)) if tok and done else None,
    "calibration_tokens": j["calibration_tokens"], "kv_lora_rank": j["kv_lora_rank"],
    "qk_rope_head_dim": j["qk_rope_head_dim"], "engine_check": j["engine_check_max_rel_diff"],
    "peak_sampled_at_s": float(peak_at[0]) if peak_at else None,
    "gpu_mib_max": max(gpu) if gpu else None,
    "ppl": [j["eval"]["ppl_before"], j["eval"]["ppl_after"]] if "eval" in j else None,
}))
PYEOF
  rm -rf "$out"
}

for s in ${SHAPES//,/ }; do
  case "$s" in
    1b) shape=llama-3.2-1b ;;
    8b) shape=llama-3-8b ;;
    *) echo "convert_bench: unknown shape '$s' (1b, 8b)" >&2; exit 2 ;;
  esac
  src="$WORK/synth-$shape"
  if [ -f "$src/.complete" ]; then
    echo "== reusing $src"
  else
    echo "== generating $src"
    "$PY" "$ROOT/bench/make_synthetic_checkpoint.py" --shape "$shape" --out "$src" --assets "$ASSETS" --force
    touch "$src/.complete"
  fi
  run_one "$shape" "$src" cpu || echo "== $shape on cpu: failed, no row"
  if gpu_available; then
    run_one "$shape" "$src" cuda || echo "== $shape on cuda: failed, no row"
  else
    echo "== $shape on cuda: skipped (no CUDA device found by nvidia-smi, or --no-gpu)"
  fi
  [ "$CLEAN" = 1 ] && rm -rf "$src"
done

"$PY" - "$RESULTS" "$CALIB_DOCS" "$CALIB_LEN" "$(nproc)" "$(uptime | sed 's/.*load average: //')" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
docs, length, cores, load = sys.argv[2:]
gib = lambda b: f"{b / 2**30:.2f} GiB"
print(f"\ncalibration {docs} docs x {length} tokens; {cores} cores, load average at the end {load}")
print("| shape | device | checkpoint (bf16, on disk) | time | load + tokenize | layers + write | peak RSS | peak RSS / checkpoint | peak at | written |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    f = lambda v, fmt: fmt.format(v) if v is not None else "-"
    print(f"| {r['shape']} | {r['device']} | {gib(r['checkpoint_bytes'])} | {r['wall_s']:.0f} s | "
          f"{f(r['load_tokenize_s'], '{:.1f} s')} | {f(r['layers_write_s'], '{:.0f} s')} | {gib(r['peak_rss_bytes'])} | "
          f"**{r['peak_rss_bytes'] / r['checkpoint_bytes']:.2f}** | {f(r['peak_sampled_at_s'], '{:.0f} s')} | "
          f"{gib(r['output_bytes'])} |")
for r in rows:
    extra = f", GPU memory used up to {r['gpu_mib_max']} MiB" if r["gpu_mib_max"] else ""
    ppl = f", perplexity {r['ppl'][0]:.1f} -> {r['ppl'][1]:.1f} (random weights)" if r["ppl"] else ""
    print(f"  {r['shape']} {r['device']}: {r['calibration_tokens']} calibration tokens, kv_lora_rank "
          f"{r['kv_lora_rank']}, rope dim {r['qk_rope_head_dim']}, engine check {r['engine_check']:.1e}{extra}{ppl}")
PYEOF
