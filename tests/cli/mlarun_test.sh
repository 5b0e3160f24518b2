#!/usr/bin/env bash
# mlarun (launch/) end to end on this machine's MPI:
#   - --dry-run prints one shell line that, run by a shell, does what mlarun would (quoting checked);
#   - one process runs the command directly, without MPI;
#   - a job where rank 1 exits 3 ends quickly with status 3, the other rank's output passed through,
#     and a last line naming rank 1;
#   - SIGTERM to mlarun stops the job (no rank left running); --timeout-s stops it with status 124;
#   - bad input gives one clear error and status 1;
#   - `mlarun --nproc-per-node 2 -- mlaforge train` on the real stories260K model (5 steps) completes
#     and its report.json says world_size 2, dp 2 (when MLAFORGE and the assets are given); a second run
#     with more steps resumes from its final checkpoint.
#   mlarun_test.sh MLARUN [MLAFORGE] [ASSETS_DIR]
# Exit 77 (skipped) when there is no mpirun.
set -uo pipefail
RUN="$1"
BIN="${2:-}"
ASSETS="${3:-}"
if ! command -v mpirun >/dev/null 2>&1; then
  echo "skipped: no mpirun in PATH"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# The thread defaults are part of the checked output: start from a clean slate.
unset OMP_NUM_THREADS MLAFORGE_NUM_THREADS
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The rank variable of whichever MPI this is (Open MPI, else MPICH's PMI).
RANK_VAR='${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-}}'

# --- dry run ---------------------------------------------------------------------------------------
threads=$(($(nproc) / 2))
[ "$threads" -lt 1 ] && threads=1
line=$("$RUN" --dry-run --nproc-per-node 2 --env "GREETING=it's a b" -- printf '%s|' "x y" '$HOME' 2>"$WORK/dry.err")
rc=$?
echo "dry run: $line"
prefix="OMP_NUM_THREADS=$threads MLAFORGE_NUM_THREADS=$threads GREETING='it'\\''s a b' mpirun -"
if [ "$rc" = 0 ] && [ "$(printf '%s\n' "$line" | wc -l)" = 1 ] && [[ "$line" == "$prefix"* ]] &&
   [[ "$line" == *" printf '%s|' 'x y' '\$HOME'" ]]; then
  ok "dry-run prints one quoted line"
else
  bad "dry-run line (exit $rc): $line / expected to start with: $prefix"
fi
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  lacks=""
  for part in "-np 2" "--map-by ppr:2:node" "--bind-to none" "--oversubscribe" "--mca btl self,vader" \
              "--mca btl_vader_single_copy_mechanism none" "-x OMP_NUM_THREADS" "-x MLAFORGE_NUM_THREADS" "-x GREETING"; do
    [[ "$line" == *" $part "* ]] || lacks="$lacks '$part'"
  done
  [ -z "$lacks" ] && ok "dry-run has the Open MPI settings" || bad "dry-run line lacks$lacks"
fi
# The printed line is a real command: run by a shell it starts the two ranks with the quoted arguments.
out=$(timeout 60 bash -c "$line" 2>"$WORK/eval.err")
if [ "$out" = "x y|\$HOME|x y|\$HOME|" ]; then
  ok "dry-run line runs as printed"
else
  bad "dry-run line run by bash printed '$out' ($(head -c 300 "$WORK/eval.err"))"
fi

# --- one process: the command itself ---------------------------------------------------------------
out=$(timeout 30 "$RUN" -- bash -c "echo \"rank=$RANK_VAR\"" 2>/dev/null)
[ "$out" = "rank=" ] && ok "one process runs without MPI" || bad "one process printed '$out'"

# --- a failing rank -----------------------------------------------------------------------------------
start=$(now_ms)
timeout 60 "$RUN" --nproc-per-node 2 -- bash -c \
  "if [ \"$RANK_VAR\" = 1 ]; then sleep 1; exit 3; fi; echo 'rank 0 is alive'; sleep 30" >"$WORK/fail.out" 2>"$WORK/fail.err"
rc=$?
elapsed=$(($(now_ms) - start))
summary=$(tail -n 1 "$WORK/fail.err")
echo "failing rank: exit $rc after $elapsed ms: $summary"
if [ "$rc" = 3 ] && [ "$elapsed" -lt 20000 ] && grep -q "rank 0 is alive" "$WORK/fail.out" &&
   [[ "$summary" =~ ^mlarun:\ job\ failed\ \(exit\ status\ 3\):\ rank\ 1( on node [^ ]+)?\ exited\ with\ status\ 3 ]]; then
  ok "a failing rank ends the job with its status and is named"
else
  bad "failing rank (exit $rc, $elapsed ms): $(cat "$WORK/fail.err" | tail -n 5)"
fi

# --- SIGTERM forwarded, nothing left running ----------------------------------------------------------
"$RUN" --nproc-per-node 2 -- bash -c "echo \$\$ > $WORK/rank.$RANK_VAR; sleep 60" >"$WORK/sig.out" 2>"$WORK/sig.err" &
pid=$!
for _ in $(seq 100); do [ -f "$WORK/rank.0" ] && [ -f "$WORK/rank.1" ] && break; sleep 0.1; done
start=$(now_ms)
kill -TERM "$pid"
wait "$pid"
rc=$?
elapsed=$(($(now_ms) - start))
sleep 0.5
alive=0
for f in "$WORK"/rank.*; do  # a zombie (exited, not yet reaped by init) counts as stopped
  state=$(ps -o stat= -p "$(cat "$f")" 2>/dev/null)
  [ -n "$state" ] && [[ "$state" != Z* ]] && alive=$((alive + 1))
done
if [ "$rc" != 0 ] && [ "$elapsed" -lt 15000 ] && [ "$alive" = 0 ] && grep -q "forwarded" "$WORK/sig.err"; then
  ok "SIGTERM stops the job (exit $rc in $elapsed ms, no rank left)"
else
  bad "SIGTERM: exit $rc after $elapsed ms, $alive ranks alive: $(tail -n 3 "$WORK/sig.err")"
fi

# --- --timeout-s --------------------------------------------------------------------------------------
start=$(now_ms)
timeout 60 "$RUN" --timeout-s 2 --nproc-per-node 2 -- sleep 60 >/dev/null 2>"$WORK/timeout.err"
rc=$?
elapsed=$(($(now_ms) - start))
if [ "$rc" = 124 ] && [ "$elapsed" -lt 14000 ] && grep -q "timeout-s 2 s" "$WORK/timeout.err"; then
  ok "--timeout-s stops the job (exit 124 in $elapsed ms)"
else
  bad "--timeout-s: exit $rc after $elapsed ms: $(tail -n 2 "$WORK/timeout.err")"
fi

# --- bad input -----------------------------------------------------------------------------------------
expect_error() {
  local name="$1" regex="$2"
  shift 2
  timeout 30 "$@" >/dev/null 2>"$WORK/err"
  local rc=$?
  if [ "$rc" = 1 ] && [ "$(wc -l <"$WORK/err")" = 1 ] && grep -Eq -- "$regex" "$WORK/err"; then
    ok "$name"
  else
    bad "$name (exit $rc: $(head -c 300 "$WORK/err"))"
  fi
}
expect_error "nproc 0" "^mlarun: error: --nproc-per-node must be at least 1 \(got 0\)" "$RUN" --nproc-per-node 0 -- true
expect_error "missing hostfile" "^mlarun: error: --hostfile $WORK/nope: cannot read it" "$RUN" --hostfile "$WORK/nope" -- true
printf 'node1 slots=2\n' >"$WORK/hosts"
expect_error "nnodes > hosts" "--nnodes 2 but --hostfile .* lists 1 host \(node1\)" "$RUN" --nnodes 2 --hostfile "$WORK/hosts" -- true
expect_error "no command" "no command: put it after" "$RUN" --nproc-per-node 2

# --- training on 2 ranks ------------------------------------------------------------------------------
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
if [ -n "$BIN" ] && [ ! -x "$BIN" ]; then
  bad "the mlaforge binary $BIN is missing (build the mlaforge target)"
elif [ -n "$BIN" ] && [ -f "$MODEL" ] && [ -f "$TXT" ]; then
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 16' "$TXT" >"$WORK/eval.txt"
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 16 && NR <= 200' "$TXT" >"$WORK/train.txt"
  cat >"$WORK/dp.yaml" <<YAML
model: {path: $MODEL, dtype: fp32, trainable: all}
data: {train: train.txt, eval: eval.txt, format: text, max_seq_len: 128, num_workers: 1}
train: {max_steps: 5, device: cpu, log_every: 1}
optim: {lr: 2.0e-3, weight_decay: 0.1, grad_clip: 1.0}
schedule: {warmup: 1}
batch: {micro_batch_size: 2, grad_accumulation: 1}
checkpoint: {every: 0}
log: {progress: never, png: false}
YAML
  start=$(now_ms)
  timeout 120 "$RUN" --nproc-per-node 2 -- "$BIN" train "$WORK/dp.yaml" train.output_dir="$WORK/run" >"$WORK/train.log" 2>&1
  rc=$?
  elapsed=$(($(now_ms) - start))
  if [ "$rc" = 0 ] && grep -Eq '"world_size": 2' "$WORK/run/report.json" && grep -Eq '"dp": 2' "$WORK/run/report.json" &&
     [ "$(grep -c '"split":"train"' "$WORK/run/metrics.jsonl")" = 5 ]; then
    ok "mlarun --nproc-per-node 2 -- mlaforge train: world_size 2, 5 steps ($elapsed ms)"
  else
    bad "training under mlarun (exit $rc): $(tail -n 8 "$WORK/train.log"; head -c 400 "$WORK/run/report.json")"
  fi
  # The run's final checkpoint (step 5) is resumed by the same recipe with more steps: steps 6-8 only.
  timeout 120 "$RUN" --nproc-per-node 2 -- "$BIN" train "$WORK/dp.yaml" train.output_dir="$WORK/run" train.max_steps=8 \
    >"$WORK/resume.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ] && [ -f "$WORK/run/step-0000005/manifest.json" ] && grep -q "resumed from .*step-0000005" "$WORK/resume.log" &&
     grep -Eq '"start_step": 5' "$WORK/run/report.json" && [ "$(grep -c '"split":"train"' "$WORK/run/metrics.jsonl")" = 8 ]; then
    ok "mlarun resume: a second run continued from the checkpoint at step 5 to step 8"
  else
    bad "resume under mlarun (exit $rc): $(grep -i 'error\|resum' "$WORK/resume.log" | head -3)"
  fi
else
  echo "skip training run: no mlaforge binary or stories260K assets under '$ASSETS'"
fi

echo "mlarun_test: $passed passed, $failed failed"
[ "$failed" = 0 ]
