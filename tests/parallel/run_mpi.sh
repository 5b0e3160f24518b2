#!/usr/bin/env bash
# Runs a program under mpirun on this machine, with the settings a CI container needs.
#   run_mpi.sh [OPTIONS] NP PROGRAM [ARGS...]
# Without --expect-failure the job must succeed (the exit status is mpirun's). Options:
#   --expect-failure SECONDS REGEX   the job must end within SECONDS, exit non-zero, and its output must
#                                    match the extended REGEX (the dead/stuck-rank drills: an error
#                                    instead of a hang)
#   --any-status                     with --expect-failure: accept mpirun's own status 0 (Open MPI's
#                                    --enable-recovery returns 0 even when ranks exited non-zero; REGEX
#                                    then has to show the ranks' error)
#   --mpirun-arg ARG                 passed to Open MPI's mpirun (repeatable)
# Open MPI settings (other MPIs get only -n NP):
#   --oversubscribe --bind-to none   more ranks than the 2 CI cores, no pinning to them
#   --allow-run-as-root              containers run as root
#   btl self,vader, vader single-copy off: shared memory without CMA (ptrace is often denied in containers)
#   plm_rsh_agent=false              when neither ssh nor rsh exists (slim images), mpirun refuses to start
#                                    even for local ranks unless told not to look for one
#   mpi_yield_when_idle              waiting ranks give up the core (oversubscribed)
set -uo pipefail

expect_failure=0
any_status=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --expect-failure) expect_failure=1; limit="$2"; pattern="$3"; shift 3 ;;
    --any-status) any_status=1; shift ;;
    --mpirun-arg) extra+=("$2"); shift 2 ;;
    *) break ;;
  esac
done
np="$1"
shift

export OMP_NUM_THREADS=1
launcher=(mpirun)
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  export OMPI_MCA_btl="self,vader"
  export OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_MCA_mpi_yield_when_idle=1
  export OMPI_MCA_rmaps_base_oversubscribe=1
  if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
    export OMPI_MCA_plm_rsh_agent=false
  fi
  launcher+=(--oversubscribe --bind-to none)
  if [ "$(id -u)" = 0 ]; then
    launcher+=(--allow-run-as-root)
  fi
  launcher+=(${extra[@]+"${extra[@]}"} -np "$np")
else
  launcher+=(-n "$np")
fi

if [ "$expect_failure" = 0 ]; then
  exec "${launcher[@]}" "$@"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start_ns=$(date +%s%N)
# A hard bound well above the limit, so a hang fails this test instead of blocking ctest.
timeout --kill-after=5 $((limit * 2)) "${launcher[@]}" "$@" >"$log" 2>&1
status=$?
elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
cat "$log"
echo "run_mpi.sh: mpirun exit status $status after ${elapsed_ms} ms (limit ${limit} s)"
if [ "$status" = 0 ] && [ "$any_status" = 0 ]; then
  echo "run_mpi.sh: FAIL: the job succeeded, expected a failure" >&2
  exit 1
fi
if [ "$elapsed_ms" -gt $((limit * 1000)) ]; then  # the hard bound (2 x limit) implies this too
  echo "run_mpi.sh: FAIL: the job did not end within ${limit} s (hang)" >&2
  exit 1
fi
if ! grep -Eq "$pattern" "$log"; then
  echo "run_mpi.sh: FAIL: output does not match: $pattern" >&2
  exit 1
fi
echo "run_mpi.sh: PASS: failed as expected (status $status) within ${limit} s"
