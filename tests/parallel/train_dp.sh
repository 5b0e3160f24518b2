#!/usr/bin/env bash
# Parallel training end to end on the real stories260K model: `mpirun -np NP mlaforge train` with
# parallel.tp TP (DP = NP / TP, accumulation 2 / DP) against one process with the same global batch
# (accumulation 2). The data loader gives the DP ranks exactly the rows of the single process's step
# (data/data_loader.h), the losses are normalised by the global token count and the gradients summed;
# tensor parallelism sums partial products across ranks in another order. So:
#   TP 1: per-step losses, gradient norms, held-out CE and final weights agree to float32 summation
#         order (measured: bitwise), tolerance LOSS_TOL (default 1e-5) on all of them;
#   TP 2: losses, gradient norms and held-out CE within LOSS_TOL; final weights within WEIGHT_TOL of
#         their scale (Adam turns rounding noise in near-zero gradients into updates of up to lr).
# DP replicas are bitwise identical (checked by the trainer, reported in report.json).
# EXTRA: recipe overrides for both runs (space separated), e.g. "parallel.zero=1 model.dtype=bf16"; @MODEL@
# stands for the model's path (e.g. "teacher.path=@MODEL@": self-distillation).
# ACCUM (environment, default 2): micro-batches per step of the single process (ACCUM / DP per rank).
# CONVERT (environment): when set, the model is stories260K converted to MLA by `mlaforge convert` with these
# arguments (a Hugging Face folder: loaded lazily, each TP rank reading only its slices).
# REFERENCE (environment): when set, the reference is not one process but the same NP-rank run with
# these overrides added (e.g. "parallel.overlap_grad_reduce=false": overlap must not change a bit).
#   train_dp.sh MLAFORGE ASSETS_DIR PYTHON [NP [TP [LOSS_TOL [WEIGHT_TOL [EXTRA]]]]]
set -uo pipefail
BIN="$1"
ASSETS="$2"
PY="$3"
NP="${4:-2}"
TP="${5:-1}"
LOSS_TOL="${6:-1e-5}"
WEIGHT_TOL="${7:-1e-5}"
read -r -a EXTRA <<< "${8:-}"
DP=$((NP / TP))
ACCUM="${ACCUM:-2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
EXTRA=("${EXTRA[@]//@MODEL@/$MODEL}")
if [ ! -f "$MODEL" ] || [ ! -f "$TXT" ]; then
  echo "skipped: $MODEL or $TXT not found"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -n "${CONVERT:-}" ]; then
  read -r -a CONVERT_ARGS <<< "$CONVERT"
  "$BIN" convert "$MODEL" "$WORK/mla" --tokenizer "$ASSETS/models/stories260K/tok512.model" --calib "$TXT" \
    "${CONVERT_ARGS[@]}" > "$WORK/convert.log" 2>&1 || { cat "$WORK/convert.log"; echo "FAIL: convert"; exit 1; }
  MODEL="$WORK/mla"
fi
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 16' "$TXT" > "$WORK/eval.txt"
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 16 && NR <= 200' "$TXT" > "$WORK/train.txt"
cat > "$WORK/dp.yaml" <<YAML
model: {path: $MODEL, dtype: fp32, trainable: all}
data: {train: train.txt, eval: eval.txt, format: text, max_seq_len: 128, num_workers: 1}
train: {max_steps: 5, device: cpu, log_every: 1}
optim: {lr: 2.0e-3, weight_decay: 0.1, grad_clip: 1.0}
schedule: {warmup: 1}
batch: {micro_batch_size: 2}
checkpoint: {every: 0}
log: {progress: never, png: false}
YAML
export MLAFORGE_NUM_THREADS=1
if [ -n "${REFERENCE:-}" ]; then
  read -r -a REF <<< "$REFERENCE"
  bash "$HERE/run_mpi.sh" "$NP" "$BIN" train "$WORK/dp.yaml" "${EXTRA[@]}" "${REF[@]}" parallel.tp="$TP" \
    batch.grad_accumulation=$((ACCUM / DP)) train.output_dir="$WORK/one" > "$WORK/one.log" 2>&1 ||
    { cat "$WORK/one.log"; echo "FAIL: the reference run failed"; exit 1; }
else
  "$BIN" train "$WORK/dp.yaml" "${EXTRA[@]}" batch.grad_accumulation="$ACCUM" train.output_dir="$WORK/one" > "$WORK/one.log" 2>&1 ||
    { cat "$WORK/one.log"; echo "FAIL: the single-process run failed"; exit 1; }
fi
bash "$HERE/run_mpi.sh" "$NP" "$BIN" train "$WORK/dp.yaml" "${EXTRA[@]}" parallel.tp="$TP" batch.grad_accumulation=$((ACCUM / DP)) \
  train.output_dir="$WORK/two" > "$WORK/two.log" 2>&1 || { cat "$WORK/two.log"; echo "FAIL: the $NP-rank run failed"; exit 1; }

"$PY" - "$WORK/one" "$WORK/two" "$NP" "$TP" "$LOSS_TOL" "$WEIGHT_TOL" "${8:-}" "${REFERENCE:-}" <<'PYEOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file

one, two = sys.argv[1], sys.argv[2]
np_, tp, loss_tol, weight_tol = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
dp = np_ // tp
def records(run, split):
    return [json.loads(l) for l in open(f"{run}/metrics.jsonl") if json.loads(l)["split"] == split]
def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)
r1, r2 = json.load(open(f"{one}/report.json")), json.load(open(f"{two}/report.json"))
reference = sys.argv[8]
assert r1["dp"] == (dp if reference else 1) and r2["dp"] == dp and r2["tp"] == tp and r2["world_size"] == np_, (r2["dp"], r2["tp"])
if dp > 1:
    assert r2.get("replicas_identical") is True, r2.get("replicas_identical")
if "overlap_grad_reduce=false" in reference:  # the run under test did overlap, the reference did not
    assert r2["grad_buckets_overlapped"] > 0 and r1["grad_buckets_overlapped"] == 0, (r2, r1)
    print(f"gradient buckets per step {r2['grad_buckets']}, started during the backward {r2['grad_buckets_overlapped']}")
assert r1["tokens"] == r2["tokens"] and r1["trained_tokens"] == r2["trained_tokens"], "the runs saw different data"
worst = {"loss": 0.0, "grad_norm": 0.0}
for a, b in zip(records(two, "train"), records(one, "train")):
    assert a["step"] == b["step"] and a["trained_tokens"] == b["trained_tokens"], (a, b)
    for k in worst:
        worst[k] = max(worst[k], rel(a[k], b[k]))
assert len(records(two, "train")) == 5
e1, e2 = records(one, "eval"), records(two, "eval")
assert len(e1) == len(e2) == 2
worst["eval"] = max(rel(a["loss"], b["loss"]) for a, b in zip(e2, e1))
w1, w2 = load_file(f"{one}/model/model.safetensors"), load_file(f"{two}/model/model.safetensors")
assert w1.keys() == w2.keys()
worst["weights"] = max(float(np.abs(w1[k] - w2[k]).max() / (np.abs(w1[k]).max() + 1e-12)) for k in w1)
against = f"the same with {reference}" if reference else "one process (same global batch)"
print(f"TP={tp} x DP={dp}{' ' + sys.argv[7] if sys.argv[7] else ''} vs {against}:", ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
bad = {k: v for k, v in worst.items() if v > (weight_tol if k == "weights" else loss_tol)}
if bad:
    sys.exit(f"FAIL: beyond tolerance (losses {loss_tol}, weights {weight_tol}): {bad}")
PYEOF
