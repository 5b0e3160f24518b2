#!/usr/bin/env bash
# Multi-stage recipes end to end on the real stories260K model (`mlaforge train` of a recipe with `stages:`,
# trainer/train_stages.h):
#   1. a 2-stage run: stage `two` starts from stage `one`'s exported model (its recipe names it, and its
#      first evaluation equals `one`'s last within 1e-6 while `one` itself moved the loss by far more), the
#      teacher stays the base's original model, each stage has its own folder and completion record;
#   2. `mlaforge validate` of the same recipe lists both stages, `--json` too;
#   3. a job SIGKILLed inside stage `two` and rerun skips the finished stage `one` (log line, its files
#      untouched) and resumes `two` from its checkpoint, ending with bitwise the weights of the
#      uninterrupted run; a third run skips both stages; a changed stage runs again;
#   4. (with MPI) the same on 2 ranks, rank 1 killed inside stage two: the rerun skips stage one in every
#      rank and ends bitwise equal to an uninterrupted 2-rank job (whose losses are the single process's).
#   stages_test.sh MLAFORGE ASSETS_DIR PYTHON [RUN_MPI_SH]
set -uo pipefail
BIN="$1"
ASSETS="$2"
PY="$3"
RUN_MPI="${4:-}"
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
if [ ! -f "$MODEL" ] || [ ! -f "$TXT" ]; then
  echo "skipped: $MODEL or $TXT not found"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
export MLAFORGE_NUM_THREADS=1 OMP_NUM_THREADS=1

awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 16' "$TXT" > eval.txt
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 16 && NR <= 400' "$TXT" > train.txt
# Stage one trains on CE only (kl_ratio 0: the weights must move, or "starts from one's export" could not
# be told from "starts from the original"); stage two distils from the base's teacher, the original model.
cat > r.yaml <<YAML
model: {path: $MODEL, dtype: fp32, trainable: all}
teacher: {path: $MODEL, kl_ratio: 0.5}
data: {train: train.txt, eval: eval.txt, format: text, max_seq_len: 128, num_workers: 1}
train: {max_steps: 8, device: cpu, log_every: 1}
optim: {lr: 2.0e-3, weight_decay: 0.1, grad_clip: 1.0}
schedule: {warmup: 1}
batch: {micro_batch_size: 1, global_batch_size: 4}
checkpoint: {every: 3, keep_last: 2}
log: {progress: never, png: false}
stages:
  - name: one
    teacher: {kl_ratio: 0.0}
    train: {max_steps: 4}
  - name: two
    optim: {lr: 1.0e-3}
YAML

# --- 1. the uninterrupted run ---------------------------------------------------------------------------
if "$BIN" train r.yaml train.output_dir=ref > ref.log 2>&1; then
  ok "two-stage-run"
else
  cat ref.log; echo "FAIL: the reference run failed"; exit 1
fi
if "$PY" - ref "$MODEL" <<'PYEOF'
import json, os, sys, yaml
run, model = sys.argv[1], os.path.normpath(os.path.abspath(sys.argv[2]))
one, two = (json.load(open(f"{run}/{s}/report.json")) for s in ("one", "two"))
r1, r2 = (yaml.safe_load(open(f"{run}/{s}/recipe.yaml")) for s in ("one", "two"))
assert r1["model"]["path"] == model, r1["model"]["path"]
assert r2["model"]["path"] == os.path.abspath(f"{run}/one/model"), r2["model"]["path"]
assert r1["teacher"]["path"] == model and r2["teacher"]["path"] == model
assert r1["teacher"]["kl_ratio"] == 0.0 and r2["teacher"]["kl_ratio"] == 0.5 and r2["optim"]["lr"] == 1e-3
assert r1["train"]["output_dir"] == os.path.abspath(f"{run}/one") and r2["train"]["output_dir"] == os.path.abspath(f"{run}/two")
assert one["complete"] and two["complete"] and one["stage"] == "one" and two["stage"] == "two"
assert one["steps"] == 4 and two["steps"] == 8, (one["steps"], two["steps"])
first, last = one["evals"][0], one["evals"][-1]
start = two["evals"][0]
assert first["step"] == 0 and last["step"] == 4 and start["step"] == 0
moved = abs(first["ce"] - last["ce"]) / last["ce"]
same = abs(start["ce"] - last["ce"]) / last["ce"]
assert moved > 1e-2, f"stage one did not move the loss ({moved:.2e}): the check below would prove nothing"
assert same <= 1e-6, f"stage two starts at ce {start['ce']}, stage one ended at {last['ce']} ({same:.2e})"
# Distillation in stage two: the KL to the original is non-zero from its first step (the student moved).
assert two["evals"][0]["kl"] > 1e-4, two["evals"][0]
print(f"  stage one ce {first['ce']:.5f} -> {last['ce']:.5f} (moved {moved:.1e}); stage two starts at "
      f"{start['ce']:.5f} (diff {same:.1e}), KL to the original {two['evals'][0]['kl']:.4f}")
PYEOF
then ok "stage-two-starts-from-stage-one-export"; else bad "stage-two-starts-from-stage-one-export"; fi

# --- 2. validate lists the stages -------------------------------------------------------------------------
if "$BIN" validate r.yaml --world-size 1 > validate.txt 2>&1 &&
   grep -q "valid, 2 stages: one two" validate.txt && grep -q "stage 2/2 'two'" validate.txt &&
   grep -q "model.path: the previous stage's export" validate.txt &&
   "$BIN" validate r.yaml --json > validate.json 2>/dev/null &&
   "$PY" -c "import json; j = json.load(open('validate.json')); s = j['stages']; assert [x['name'] for x in s] == ['one', 'two'] and s[1]['model_from_previous'] and s[1]['plan']['grad_accumulation'] == 4, s" ; then
  ok "validate-lists-stages"
else
  bad "validate-lists-stages"; cat validate.txt
fi

# --- 3. killed inside stage two, rerun: stage one skipped, stage two resumed ------------------------------
{ MLAFORGE_FAULT=step:6 "$BIN" train r.yaml train.output_dir=run > run.1.log 2>&1; } 2> /dev/null
rc=$?
if [ $rc -ne 137 ] || [ ! -f run/one/report.json ] || [ -f run/two/report.json ]; then
  bad "kill-in-stage-two (status $rc, expected 137 after stage one finished)"; tail -5 run.1.log
else
  stamp="$(stat -c %Y.%s run/one/report.json run/one/model/model.safetensors run/one/metrics.jsonl | tr '\n' ' ')"
  sleep 1
  if "$BIN" train r.yaml train.output_dir=run > run.2.log 2>&1 &&
     grep -q "stage 1/2 'one': complete (.*): skipped" run.2.log &&
     grep -q "resumed from .*two/step-0000003" run.2.log &&
     [ "$stamp" = "$(stat -c %Y.%s run/one/report.json run/one/model/model.safetensors run/one/metrics.jsonl | tr '\n' ' ')" ] &&
     "$PY" - <<'PYEOF'
import numpy as np
from safetensors.numpy import load_file
for stage in ("one", "two"):
    a, b = load_file(f"ref/{stage}/model/model.safetensors"), load_file(f"run/{stage}/model/model.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"stage {stage}: {len(diff)} tensors differ from the uninterrupted run ({diff[:3]})"
print("  both stages' exports bitwise equal to the uninterrupted run")
PYEOF
  then
    ok "rerun-skips-finished-stage-and-resumes"
  else
    bad "rerun-skips-finished-stage-and-resumes"; tail -20 run.2.log
  fi
  if "$BIN" train r.yaml train.output_dir=run > run.3.log 2>&1 &&
     [ "$(grep -c "^# r.yaml, stage [12]/2 '[a-z]*': complete (.*): skipped" run.3.log)" -eq 2 ] &&
     ! grep -q "starting" run.3.log; then
    ok "third-run-skips-both"
  else
    bad "third-run-skips-both"; tail -10 run.3.log
  fi
  # A changed stage (its recipe differs from the record) runs again; the stage before it stays skipped.
  if "$BIN" train r.yaml train.output_dir=run stages.two.train.max_steps=9 > run.4.log 2>&1 &&
     grep -q "stage 1/2 'one': complete" run.4.log && grep -q "stage 2/2 'two': starting (.*another recipe)" run.4.log; then
    ok "changed-stage-runs-again"
  else
    bad "changed-stage-runs-again"; tail -10 run.4.log
  fi
fi

# --- 4. (with MPI) two ranks: the stages run in every rank, a rank killed inside stage two, rerun --------
if [ -n "$RUN_MPI" ] && command -v mpirun > /dev/null 2>&1; then
  mpi() { bash "$RUN_MPI" 2 "$BIN" train r.yaml "$@"; }
  mpi train.output_dir=dp-ref > dp-ref.log 2>&1 || { tail -20 dp-ref.log; bad "mpi-two-ranks-reference-run"; }
  { MLAFORGE_FAULT=step:6@1 mpi train.output_dir=dp > dp.1.log 2>&1; } 2> /dev/null
  if [ -f dp/one/report.json ] && [ ! -f dp/two/report.json ] &&
     mpi train.output_dir=dp > dp.2.log 2>&1 &&
     grep -q "stage 1/2 'one': complete (.*): skipped" dp.2.log && grep -q "resumed from .*two/step-0000003" dp.2.log &&
     "$PY" - <<'PYEOF'
import json
import numpy as np
from safetensors.numpy import load_file
# The killed and resumed 2-rank job ends bitwise where the uninterrupted 2-rank job does.
for stage in ("one", "two"):
    a, b = load_file(f"dp-ref/{stage}/model/model.safetensors"), load_file(f"dp/{stage}/model/model.safetensors")
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"stage {stage}: {len(diff)} tensors differ from the uninterrupted 2-rank run ({diff[:3]})"
# And data parallel computes the single process's steps (same global batch): losses agree closely.
for stage in ("one", "two"):
    ref, dp = ([r for r in map(json.loads, open(f"{run}/{stage}/metrics.jsonl")) if r["split"] == "train"]
               for run in ("ref", "dp-ref"))
    worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(ref, dp))
    assert len(ref) == len(dp) and worst <= 1e-4, f"stage {stage}: DP 2 losses differ by {worst:.1e}"
two = json.load(open("dp/two/report.json"))
assert two["complete"] and two["dp"] == 2 and two["replicas_identical"], two
print(f"  2 ranks: killed + resumed job bitwise equal to the uninterrupted one; losses within {worst:.1e} of one process")
PYEOF
  then
    ok "mpi-two-ranks-kill-in-stage-two-rerun"
  else
    bad "mpi-two-ranks-kill-in-stage-two-rerun"; tail -n 15 dp.1.log dp.2.log
  fi
else
  echo "skip mpi part (no mpirun or no run_mpi.sh given)"
fi

echo "stages test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
