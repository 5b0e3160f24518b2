#!/usr/bin/env bash
# Data-parallel scaling of `mlaforge train` on CPU: one process against `mpirun -np N`, the same global
# batch (one process accumulates N micro-batches, each rank takes one), one LibTorch thread per process.
# Prints steady-state tokens/s of both, the scaling efficiency tokens/s(N) / (N x tokens/s(1)) and the
# fraction of a step spent in the gradient all-reduce (waiting for the slower rank included).
#   bench/dp_bench.sh [--np N] [--model PATH] [--steps S] [--seq L] [--micro B] [--trainable all|up_proj]
# Default: stories260K (llama2.c, ../shared/assets), N 2, 30 steps of micro-batch 8 x 256 tokens, all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MLAFORGE_BUILD:-$ROOT/build}/bin/mlaforge"
PY="${MLAFORGE_PYTHON:-$HOME/.cache/mlaforge/venv/bin/python}"
NP=2 MODEL="$ROOT/../shared/assets/models/stories260K/stories260K.bin" STEPS=30 SEQ=256 MICRO=8 TRAINABLE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --np) NP="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --seq) SEQ="$2"; shift 2 ;;
    --micro) MICRO="$2"; shift 2 ;;
    --trainable) TRAINABLE="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TXT="$ROOT/../shared/assets/text/tinystories_val_part1.txt"
WORK="${TMPDIR:-/tmp}/mlaforge-dp-bench"
rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/r.yaml" <<YAML
model: {path: $MODEL, dtype: fp32, trainable: $TRAINABLE}
data: {train: $TXT, format: text, max_seq_len: $SEQ, num_workers: 1}
train: {max_steps: $STEPS, device: cpu, log_every: 1000, export_at_end: false}
optim: {lr: 1.0e-4}
schedule: {warmup: 1, decay: constant}
batch: {micro_batch_size: $MICRO}
eval: {at_start: false, at_end: false}
checkpoint: {every: 0}
log: {progress: never, png: false}
YAML
export MLAFORGE_NUM_THREADS=1
"$BIN" train "$WORK/r.yaml" batch.grad_accumulation="$NP" train.output_dir="$WORK/one" > "$WORK/one.log" 2>&1
bash "$ROOT/tests/parallel/run_mpi.sh" "$NP" "$BIN" train "$WORK/r.yaml" batch.grad_accumulation=1 \
  train.output_dir="$WORK/dp" > "$WORK/dp.log" 2>&1
"$PY" - "$WORK/one" "$WORK/dp" "$NP" "$MODEL" <<'PYEOF'
import json, statistics, sys
one, dp, n, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def steady(run):
    recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    recs = [r for r in recs if r["split"] == "train"][3:]  # after warm-up
    tps = sum(r["tokens"] for r in recs) / sum(r["tokens"] / r["tokens_per_s"] for r in recs)
    comm = statistics.mean(r.get("comm_frac", 0.0) for r in recs)
    return tps, comm, len(recs)
t1, _, k = steady(one)
tn, comm, _ = steady(dp)
print(f"model {model}: {k} steady steps, same global batch")
print(f"  1 process  : {t1:9.0f} tokens/s")
print(f"  {n} processes: {tn:9.0f} tokens/s   scaling efficiency {tn / (n * t1):.2f}   "
      f"all-reduce (incl. waiting) {100 * comm:.1f}% of a step")
PYEOF
