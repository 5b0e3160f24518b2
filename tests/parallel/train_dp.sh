#!/usr/bin/env bash
# Data parallelism end to end: `mpirun -np 2 mlaforge train` (DP 2, accumulation 1) against one process
# with the same global batch (accumulation 2) on the real stories260K model. The data loader gives DP=2
# exactly the rows of DP=1's step (data/data_loader.h), the losses are normalised by the global token
# count and the gradients summed, so the runs agree up to float32 summation order: per-step losses and
# gradient norms within 1e-5 relative, held-out CE within 1e-5, final weights within 1e-5 of their
# scale; the replicas are bitwise identical (checked by the trainer, reported in report.json).
#   train_dp.sh MLAFORGE ASSETS_DIR PYTHON
set -uo pipefail
BIN="$1"
ASSETS="$2"
PY="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
if [ ! -f "$MODEL" ] || [ ! -f "$TXT" ]; then
  echo "skipped: $MODEL or $TXT not found"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
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
"$BIN" train "$WORK/dp.yaml" batch.grad_accumulation=2 train.output_dir="$WORK/one" > "$WORK/one.log" 2>&1 ||
  { cat "$WORK/one.log"; echo "FAIL: the single-process run failed"; exit 1; }
bash "$HERE/run_mpi.sh" 2 "$BIN" train "$WORK/dp.yaml" batch.grad_accumulation=1 train.output_dir="$WORK/two" \
  > "$WORK/two.log" 2>&1 || { cat "$WORK/two.log"; echo "FAIL: the 2-rank run failed"; exit 1; }

"$PY" - "$WORK/one" "$WORK/two" <<'PYEOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file

one, two = sys.argv[1], sys.argv[2]
def records(run, split):
    return [json.loads(l) for l in open(f"{run}/metrics.jsonl") if json.loads(l)["split"] == split]
def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)
r1, r2 = json.load(open(f"{one}/report.json")), json.load(open(f"{two}/report.json"))
assert r1["dp"] == 1 and r2["dp"] == 2 and r2["world_size"] == 2, (r1["dp"], r2["dp"])
assert r2.get("replicas_identical") is True, r2.get("replicas_identical")
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
print("DP=2 vs one process (same global batch):", ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
bad = {k: v for k, v in worst.items() if v > 1e-5}
if bad:
    sys.exit(f"FAIL: beyond 1e-5: {bad}")
PYEOF
