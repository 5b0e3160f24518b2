#!/usr/bin/env bash
# What checkpointing costs a training run: the same `mlaforge train` run three times side by side, saving
# only at the end, saving every E steps synchronously, and every E steps in the background
# (checkpoint.async), and the loop's wall time (report.json train_seconds, saves included) of each; the
# overhead per save is the difference to the first divided by the number of periodic saves. Also prints
# the bytes of one checkpoint and the write throughput the trainer logged.
#   bench/checkpoint_overhead.sh [--model PATH] [--steps S] [--every E] [--seq L] [--micro B]
#                                [--trainable all|up_proj]
# Default: SmolLM2-135M-Instruct (the GGUF scripts/setup.sh fetches for the demo), `all` (1.6 GB of fp32 weights + AdamW moments per
# checkpoint), 12 steps of 2 x 128 tokens, a save every 3 steps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MLAFORGE_BUILD:-$ROOT/build}/bin/mlaforge"
PY="${MLAFORGE_PYTHON:-$HOME/.cache/mlaforge/venv/bin/python}"
MODEL="$HOME/.cache/mlaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf" STEPS=12 EVERY=3 SEQ=128 MICRO=2 TRAINABLE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --every) EVERY="$2"; shift 2 ;;
    --seq) SEQ="$2"; shift 2 ;;
    --micro) MICRO="$2"; shift 2 ;;
    --trainable) TRAINABLE="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TXT="$ROOT/../shared/assets/text/tinystories_val_part1.txt"
WORK="${TMPDIR:-/tmp}/mlaforge-checkpoint-bench"
rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/r.yaml" <<YAML
model: {path: $MODEL, dtype: fp32, trainable: $TRAINABLE}
data: {train: $TXT, format: text, max_seq_len: $SEQ, num_workers: 1, max_examples: 2000}
train: {max_steps: $STEPS, device: cpu, log_every: 1000, export_at_end: false}
optim: {lr: 1.0e-5}
schedule: {warmup: 1, decay: constant}
batch: {micro_batch_size: $MICRO, grad_accumulation: 1}
eval: {at_start: false, at_end: false}
checkpoint: {keep_last: 1, resume: none}
log: {progress: never, png: false}
YAML
for run in "end:checkpoint.every=0" "sync:checkpoint.every=$EVERY" "async:checkpoint.every=$EVERY checkpoint.async=true"; do
  name="${run%%:*}"
  # shellcheck disable=SC2086
  "$BIN" train "$WORK/r.yaml" ${run#*:} train.output_dir="$WORK/$name" > "$WORK/$name.log" 2>&1 ||
    { tail "$WORK/$name.log"; exit 1; }
done
"$PY" - "$WORK" "$STEPS" "$EVERY" <<'PYEOF'
import json, os, re, sys
work, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
saves = (steps - 1) // every  # periodic saves (the final one is in every run)
def run(name):
    r = json.load(open(f"{work}/{name}/report.json"))
    log = open(f"{work}/{name}.log").read()
    mb = [float(x) for x in re.findall(r"checkpoint \S+: ([0-9.]+) MB in ([0-9.]+) s", log) for x in x[:1]]
    return r["train_seconds"], (mb[-1] if mb else 0.0)
base, size = run("end")
print(f"{steps} steps, {saves} periodic saves of {size:.0f} MB each (+ the final save in every run)")
print("| saving | loop wall time (s) | overhead per periodic save (s) | relative to a step |")
print("| --- | ---: | ---: | ---: |")
step = base / steps
for name, label in [("end", "at the end only"), ("sync", f"every {every} steps"), ("async", f"every {every} steps, async")]:
    t, _ = run(name)
    per = (t - base) / saves if saves else 0.0
    print(f"| {label} | {t:.1f} | {per:.2f} | {per / step:.2f} |")
PYEOF
