#!/usr/bin/env bash
# Tensor- and data-parallel scaling of `mlaforge train` on CPU: the same global batch trained in one
# process and in each layout given (mpirun, one LibTorch thread per process), side by side in one run.
# Prints per layout: steady-state tokens/s, tokens/s per process, scaling efficiency
# tokens/s(N) / (N x tokens/s(1)), the share of a step in the data-parallel collectives (comm_frac), and
# the model FLOPs utilisation against the measured fp32 GEMM peak of one thread (MFU per process).
#   bench/parallel_bench.sh [--layouts "tp=1,dp=2 tp=2,dp=1 ..."] [--model PATH] [--steps S] [--seq L]
#                           [--micro B] [--trainable all|up_proj]
# Layout keys: tp, dp (processes = tp x dp), zero (0/1), overlap (0/1: gradient reduction started from the
# backward, parallel/grad_sync.h; default 1), bucket (MiB per gradient bucket, default 25). Default: stories260K (../shared/assets), layouts
# tp=1,dp=2 / tp=1,dp=2,zero=1 / tp=2,dp=1, 20 steps of 4 x 256 tokens per micro-batch, `all`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MLAFORGE_BUILD:-$ROOT/build}/bin/mlaforge"
PY="${MLAFORGE_PYTHON:-$HOME/.cache/mlaforge/venv/bin/python}"
LAYOUTS="tp=1,dp=2 tp=1,dp=2,zero=1 tp=2,dp=1"
MODEL="$ROOT/../shared/assets/models/stories260K/stories260K.bin" STEPS=20 SEQ=256 MICRO=4 TRAINABLE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --layouts) LAYOUTS="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --seq) SEQ="$2"; shift 2 ;;
    --micro) MICRO="$2"; shift 2 ;;
    --trainable) TRAINABLE="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TXT="$ROOT/../shared/assets/text/tinystories_val_part1.txt"
WORK="${TMPDIR:-/tmp}/mlaforge-parallel-bench"
rm -rf "$WORK" && mkdir -p "$WORK"
# Global batch: micro x 2 rows whatever the layout (one process accumulates, DP ranks split them).
cat > "$WORK/r.yaml" <<YAML
model: {path: $MODEL, dtype: fp32, trainable: $TRAINABLE}
data: {train: $TXT, format: text, max_seq_len: $SEQ, num_workers: 1}
train: {max_steps: $STEPS, device: cpu, log_every: 1000, export_at_end: false}
optim: {lr: 1.0e-4}
schedule: {warmup: 1, decay: constant}
batch: {micro_batch_size: $MICRO, global_batch_size: $((MICRO * 2))}
eval: {at_start: false, at_end: false}
checkpoint: {every: 0, keep_last: 1}
log: {progress: never, png: false}
YAML
export MLAFORGE_NUM_THREADS=1
"$BIN" train "$WORK/r.yaml" train.output_dir="$WORK/one" > "$WORK/one.log" 2>&1 || { tail "$WORK/one.log"; exit 1; }
runs=("one:1:1:0:1:25")
for layout in $LAYOUTS; do
  tp=1 dp=1 zero=0 overlap=1 bucket=25
  IFS=, read -r -a kv <<< "$layout"
  for pair in "${kv[@]}"; do eval "${pair%%=*}=${pair#*=}"; done
  name="tp${tp}dp${dp}z${zero}o${overlap}b${bucket}"
  overlap_flag=$([ "$overlap" = 1 ] && echo true || echo false)
  bash "$ROOT/tests/parallel/run_mpi.sh" $((tp * dp)) "$BIN" train "$WORK/r.yaml" parallel.tp="$tp" parallel.zero="$zero" \
    parallel.overlap_grad_reduce="$overlap_flag" parallel.bucket_mb="$bucket" train.output_dir="$WORK/$name" > "$WORK/$name.log" 2>&1 || { tail "$WORK/$name.log"; exit 1; }
  runs+=("$name:$tp:$dp:$zero:$overlap:$bucket")
done
"$PY" - "$WORK" "$MODEL" "${runs[@]}" <<'PYEOF'
import json, statistics, sys, time
import torch
work, model, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
torch.set_num_threads(1)
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3): a @ b
t = time.perf_counter(); n = 20
for _ in range(n): a @ b
peak = 2 * 1024**3 * n / (time.perf_counter() - t)  # FLOP/s of one thread's fp32 GEMM
def steady(run):
    recs = [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl")]
    recs = [r for r in recs if r["split"] == "train"][3:]  # after warm-up
    secs = sum(r["tokens"] / r["tokens_per_s"] for r in recs)
    tps = sum(r["tokens"] for r in recs) / secs
    tflops = sum(r["tflops"] * r["tokens"] / r["tokens_per_s"] for r in recs) / secs
    comm = statistics.mean(r.get("comm_frac", 0.0) for r in recs)
    overlapped = statistics.mean(r.get("overlapped_buckets", 0.0) for r in recs)
    return tps, tflops, comm, overlapped
print(f"model {model}; same global batch in every layout; fp32 GEMM peak of one thread {peak / 1e9:.1f} GFLOP/s")
print(f"| layout | processes | tokens/s | tokens/s per process | scaling efficiency | DP comm waited for | buckets started in backward | MFU per process |")
print(f"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base = None
for spec in runs:
    name, tp, dp, zero, overlap, bucket = spec.split(":")
    n = int(tp) * int(dp)
    tps, tflops, comm, overlapped = steady(name)
    base = base or tps
    label = "1 process" if name == "one" else (f"TP {tp} x DP {dp}" + (" ZeRO-1" if zero == "1" else "") +
                                               ("" if int(dp) == 1 else (", overlap" if overlap == "1" else ", no overlap") +
                                                f", {bucket} MiB buckets"))
    print(f"| {label} | {n} | {tps:,.0f} | {tps / n:,.0f} | {tps / (n * base):.2f} | {100 * comm:.1f}% | "
          f"{overlapped:.0f} | {100 * tflops * 1e12 / (n * peak):.1f}% |")
PYEOF
