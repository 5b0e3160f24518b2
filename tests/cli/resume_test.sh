#!/usr/bin/env bash
# Checkpoints and resume, end to end on the real stories260K model (`mlaforge train`, trainer/train_checkpoint.h):
#   1. exact resume: a run SIGKILLed at chosen points (after a step, in the middle of a save, after the
#      last step) and resumed ends with bitwise the final weights and the loss curve of an uninterrupted run;
#   2. kills at random moments (SIGKILL a random few ms after a chosen step, 10 times in a row, each run
#      resuming the previous);
#   3. a corrupt, truncated or missing shard: `auto` falls back to the previous checkpoint (warning naming the
#      file) and still ends bitwise equal; an explicit path to it, or a checkpoint of another model, is an
#      error naming the file / fingerprint;
#   4. (with MPI) 2 ranks with ZeRO-1 and background saves, killed 10 times at random (point, step, rank)
#      drawn from a fixed seed, resumed each time: bitwise equal to the uninterrupted 2-rank run;
#   5. (with MPI) resharding: a TP 2 x DP 2 checkpoint resumed at TP 1 x DP 4, TP 4 x DP 1 and in one
#      process: the remaining steps' losses match the uninterrupted single-process run within 2e-5 (the
#      tolerance of TP training itself, tests/parallel/train_dp.sh), on exactly the same tokens.
#   resume_test.sh MLAFORGE ASSETS_DIR PYTHON [RUN_MPI_SH]
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
cat > r.yaml <<YAML
model: {path: $MODEL, dtype: fp32, trainable: all}
data: {train: train.txt, eval: eval.txt, format: text, max_seq_len: 128, num_workers: 1}
train: {max_steps: 12, device: cpu, log_every: 1}
optim: {lr: 2.0e-3, weight_decay: 0.1, grad_clip: 1.0}
schedule: {warmup: 1}
batch: {micro_batch_size: 1, global_batch_size: 4}
checkpoint: {every: 3, keep_last: 2}
log: {progress: never, png: false}
YAML

# same RUN_A RUN_B [rtol]: final weights and per-step train losses / tokens; rtol 0 = bitwise.
same() {
  "$PY" - "$1" "$2" "${3:-0}" <<'PYEOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
a, b, rtol = sys.argv[1], sys.argv[2], float(sys.argv[3])
def train(run):
    return [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if r["split"] == "train"]
ta, tb = train(a), train(b)
assert [r["step"] for r in ta] == [r["step"] for r in tb], ([r["step"] for r in ta], [r["step"] for r in tb])
assert [r["tokens"] for r in ta] == [r["tokens"] for r in tb], "different tokens per step"
worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(ta, tb))
if rtol == 0:
    wa, wb = load_file(f"{a}/model/model.safetensors"), load_file(f"{b}/model/model.safetensors")
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not np.array_equal(wa[k], wb[k])]
    assert not diff and worst == 0, f"not bitwise: {len(diff)} tensors differ ({diff[:3]}), loss rel {worst:.2e}"
else:
    assert worst <= rtol, f"losses differ by {worst:.2e} > {rtol}"
print(f"  {len(ta)} steps, loss rel diff {worst:.1e}")
PYEOF
}

"$BIN" train r.yaml train.output_dir=ref > ref.log 2>&1 || { cat ref.log; echo "FAIL: the reference run failed"; exit 1; }

# --- 1. kills at chosen points ------------------------------------------------------------------------
for fault in step:5 save:6 step:12 save:12 step:1; do
  run="kill-${fault/:/-}"
  { MLAFORGE_FAULT=$fault "$BIN" train r.yaml train.output_dir="$run" > "$run.1.log" 2>&1; } 2> /dev/null
  rc=$?
  if [ $rc -ne 137 ]; then bad "kill-at-$fault (expected SIGKILL, status $rc)"; continue; fi
  if "$BIN" train r.yaml train.output_dir="$run" > "$run.2.log" 2>&1 && same ref "$run"; then
    ok "kill-at-$fault-resumes-bitwise ($(grep -o 'resumed from [^ ]*' "$run.2.log" | head -1 || echo 'started afresh'))"
  else
    bad "kill-at-$fault-resumes-bitwise"; tail -5 "$run.2.log"
  fi
done

# --- 2. ten kills at random moments, each run resuming the previous one ------------------------------
cat > long.yaml <<YAML
model: {path: $MODEL, dtype: fp32, trainable: all}
data: {train: train.txt, format: text, max_seq_len: 128, num_workers: 1}
train: {max_steps: 150, device: cpu, log_every: 1}
optim: {lr: 1.0e-3, weight_decay: 0.1, grad_clip: 1.0}
batch: {micro_batch_size: 1, global_batch_size: 2}
checkpoint: {every: 5, keep_last: 2}
log: {progress: never, png: false}
YAML
"$BIN" train long.yaml train.output_dir=long-ref > long-ref.log 2>&1 || { cat long-ref.log; exit 1; }
RANDOM=7
kills=0
# Each run is SIGKILLed a random 0-39 ms after it has logged a random 3-12 steps of its own: the moment
# within a step or a save is random, and anchoring on the log makes every run die before the end whatever
# the machine's speed (a plain wall-clock timeout let fast CI machines finish the run).
for i in $(seq 1 10); do
  steps=$((3 + RANDOM % 10))
  delay=$(printf "0.%03d" $((RANDOM % 40)))
  "$BIN" train long.yaml train.output_dir=long > "long.$i.log" 2>&1 &
  pid=$!
  until [ "$(grep -c '] step [0-9]*/' "long.$i.log")" -ge "$steps" ] || ! kill -0 "$pid" 2> /dev/null; do
    sleep 0.005
  done
  sleep "$delay"
  kill -KILL "$pid" 2> /dev/null
  wait "$pid" 2> /dev/null
  [ $? -eq 137 ] && kills=$((kills + 1))
done
if [ "$kills" -lt 10 ]; then
  bad "random-kills (only $kills of 10 runs were killed before the run finished)"
elif "$BIN" train long.yaml train.output_dir=long > long.final.log 2>&1 && same long-ref long; then
  ok "random-kills-resume-bitwise ($kills of 10 runs killed, last resumed from $(grep -o 'step-[0-9]*' long.final.log | head -1 || echo none))"
else
  bad "random-kills-resume-bitwise"; tail -5 long.final.log
fi

# --- 3. damaged checkpoints ---------------------------------------------------------------------------
damage() {  # damage KIND RUN: damages the newest checkpoint's rank file
  local f="$2/step-0000012/rank-00000-of-00001.safetensors"
  case "$1" in
    corrupt) printf '\x5a' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 100 )) conv=notrunc status=none ;;
    truncated) truncate -s -1000 "$f" ;;
    missing) rm "$f" ;;
  esac
}
for kind in corrupt truncated missing; do
  cp -r ref "dmg-$kind"
  rm -rf "dmg-$kind/model" "dmg-$kind/report.json"
  damage "$kind" "dmg-$kind"
  # A longer run: resumes from step 9 (step 12 is damaged), redoes 10-12 and stops there as the reference.
  if "$BIN" train r.yaml train.output_dir="dmg-$kind" > "dmg-$kind.log" 2>&1 &&
     grep -q "step-0000012.*rank-00000-of-00001.safetensors" "dmg-$kind.log" &&
     grep -q "resumed from .*step-0000009" "dmg-$kind.log" && same ref "dmg-$kind"; then
    ok "auto-skips-$kind-checkpoint"
  else
    bad "auto-skips-$kind-checkpoint"; grep -i "warn\|error" "dmg-$kind.log" | head -5
  fi
done
cp -r ref explicit && damage corrupt explicit
if "$BIN" train r.yaml train.output_dir=explicit-out checkpoint.resume="$WORK/explicit/step-0000012" > explicit.log 2>&1; then
  bad "explicit-corrupt-checkpoint-is-an-error"
elif grep -q "rank-00000-of-00001.safetensors: checksum" explicit.log; then
  ok "explicit-corrupt-checkpoint-is-an-error"
else
  bad "explicit-corrupt-checkpoint-is-an-error ($(grep error explicit.log | head -2))"
fi
if "$BIN" train r.yaml 'model.trainable=*.attn.*' train.output_dir=other checkpoint.resume="$WORK/ref/step-0000012" > other.log 2>&1; then
  bad "other-model-checkpoint-is-an-error"
elif grep -q "fingerprint" other.log; then
  ok "other-model-checkpoint-is-an-error"
else
  bad "other-model-checkpoint-is-an-error ($(grep error other.log | head -2))"
fi

# --- 4 and 5: several ranks -------------------------------------------------------------------------------
if [ -n "$RUN_MPI" ] && command -v mpirun > /dev/null 2>&1; then
  mpi() { local np="$1"; shift; bash "$RUN_MPI" "$np" "$BIN" train "$@"; }
  Z=(r.yaml parallel.zero=1 checkpoint.async=true checkpoint.every=2 train.max_steps=24)
  mpi 2 "${Z[@]}" train.output_dir=zref > zref.log 2>&1 || { tail -20 zref.log; echo "FAIL: the 2-rank run failed"; exit 1; }
  # Ten kill points at increasing steps (each run resumes before its point, so each one is reached): a
  # random step in 1..23, a random rank, and in the middle of the save when the step has one (even steps).
  kill_steps=$("$PY" -c "import random; random.seed(11); print(*sorted(random.sample(range(1, 24), 10)))")
  RANDOM=11
  kills=0
  for s in $kill_steps; do
    fault="step:$s@$((RANDOM % 2))"
    [ $((s % 2)) = 0 ] && [ $((RANDOM % 2)) = 0 ] && fault="save:$s@$((RANDOM % 2))"
    MLAFORGE_FAULT=$fault mpi 2 "${Z[@]}" train.output_dir=zkill > "zkill.$s.log" 2>&1 || kills=$((kills + 1))
    echo "  killed at $fault"
  done
  if mpi 2 "${Z[@]}" train.output_dir=zkill > zkill.final.log 2>&1 && same zref zkill; then
    ok "mpi-zero-async-random-rank-kills-resume-bitwise ($kills of 10 jobs killed)"
  else
    bad "mpi-zero-async-random-rank-kills-resume-bitwise"; tail -5 zkill.final.log
  fi

  # Resharding: TP 2 x DP 2 killed after step 7 (its last checkpoint: step 6), resumed in other layouts.
  MLAFORGE_FAULT=step:7@3 mpi 4 r.yaml parallel.tp=2 checkpoint.every=6 train.output_dir=tp2dp2 > tp2dp2.log 2>&1
  if [ ! -f tp2dp2/step-0000006/manifest.json ]; then
    bad "reshard (no TP 2 x DP 2 checkpoint at step 6)"; tail -5 tp2dp2.log
  else
    for layout in "4 parallel.tp=1" "4 parallel.tp=4" "1 parallel.tp=1"; do
      read -r np tp <<< "$layout"
      out="reshard-np$np-${tp#parallel.}"
      cp -r tp2dp2 "$out"
      if { if [ "$np" = 1 ]; then "$BIN" train r.yaml "$tp" train.output_dir="$out"; else mpi "$np" r.yaml "$tp" train.output_dir="$out"; fi; } > "$out.log" 2>&1 &&
         grep -q "resumed from .*step-0000006" "$out.log" && same ref "$out" 2e-5; then
        ok "reshard-tp2dp2-to-np$np-${tp#parallel.}"
      else
        bad "reshard-tp2dp2-to-np$np-${tp#parallel.}"; grep -i "error\|resumed" "$out.log" | head -3
      fi
    done
  fi
else
  echo "skipped: the MPI cases (no run_mpi.sh given or no mpirun)"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
