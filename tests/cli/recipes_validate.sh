#!/usr/bin/env bash
# Every recipe under recipes/ validates for the world size it is written for, and the estimates its header
# states are what the code computes.
#   1. each recipes/**/*.yaml must carry a `# world-size: N` header line; `mlaforge validate --no-files
#      --world-size N` must accept it (every stage of a recipe with stages); the models and data are not
#      here, so paths are not checked (their ${VAR:-fallback} forms must still expand);
#   2. a recipe with a `# estimate-model: SHAPE [--mla ROPE_DIM KV_LORA_RANK]` line is estimated with the
#      configs bench/make_synthetic_checkpoint.py --config-only writes from the model's public dimensions
#      (the student: converted with --mla; the teacher: the original), and each `# estimate <stage>: ...`
#      line of its header must be exactly what `mlaforge validate --estimate` prints for that stage now
#      (so a header cannot drift from the code);
#   3. the parameter count mlaforge derives from each generated original config equals the published
#      total of the real checkpoint (EXPECTED_PARAMS in make_synthetic_checkpoint.py).
#   recipes_validate.sh MLAFORGE SOURCE_DIR PYTHON
set -uo pipefail
BIN="$1"
SRC="$2"
PY="$3"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
# The demo recipe names the default model without a fallback (scripts/demo.sh exports it).
export MLAFORGE_DEFAULT_MODEL="${MLAFORGE_DEFAULT_MODEL:-/models/default.gguf}"
unset MLAFORGE_MODEL MLAFORGE_TEACHER MLAFORGE_DATA

# The `# estimate <stage>: ...` lines of a recipe as the code computes them now.
cat > "$WORK/lines.py" <<'PYEOF'
import json, sys
j = json.load(sys.stdin)
runs = j["stages"] if "stages" in j else [dict(j, name="run")]
for s in runs:
    e = s["estimate"]
    fit = "fits" if e["fits"] else "DOES NOT FIT"
    print(f"# estimate {s['name']}: {e['peak_gib']:.1f} GiB per GPU ({fit} {e['gpu_memory_gib']:.1f}), "
          f"{round(e['tokens_per_second'], -2):.0f} tokens/s ({round(e['tokens_per_second_per_gpu'], -1):.0f} per GPU)")
PYEOF
# estimate_lines RECIPE WORLD STUDENT_CONFIG TEACHER_CONFIG
estimate_lines() {
  "$BIN" validate "$1" --no-files --world-size "$2" --estimate --model-config "$3" --teacher-config "$4" --json |
    "$PY" "$WORK/lines.py"
}

shapes_done=" "
config_for() {  # config_for SHAPE [--mla R K] -> path of a generated config.json
  local shape="$1"; shift
  local dir="$WORK/configs/$shape${1:+-mla-$2-$3}"
  if [ ! -f "$dir/config.json" ]; then
    "$PY" "$SRC/bench/make_synthetic_checkpoint.py" --shape "$shape" --out "$dir" --config-only "$@" > /dev/null || return 1
  fi
  echo "$dir/config.json"
}

mapfile -t recipes < <(find "$SRC/recipes" -name '*.yaml' -o -name '*.yml' | sort)
[ "${#recipes[@]}" -gt 0 ] || { echo "FAIL no recipes found under $SRC/recipes"; exit 1; }
for recipe in "${recipes[@]}"; do
  name="${recipe#"$SRC"/}"
  world="$(sed -n 's/^# world-size: *\([0-9][0-9]*\) *$/\1/p' "$recipe" | head -1)"
  if [ -z "$world" ]; then
    bad "$name: no '# world-size: N' header line (the world size the recipe is written for)"
    continue
  fi
  if "$BIN" validate "$recipe" --no-files --world-size "$world" > "$WORK/out.txt" 2>&1; then
    ok "$name validates for world size $world"
  else
    bad "$name (world size $world)"; cat "$WORK/out.txt"
    continue
  fi
  model_line="$(sed -n 's/^# estimate-model: *//p' "$recipe" | head -1)"
  [ -n "$model_line" ] || continue
  read -r -a model_args <<< "$model_line"
  shape="${model_args[0]}"
  student="$(config_for "${model_args[@]}")" && teacher="$(config_for "$shape")" || {
    bad "$name: cannot write the configs of '$model_line'"; continue
  }
  expected="$(grep '^# estimate [a-z0-9_-]*:' "$recipe")"
  actual="$(estimate_lines "$recipe" "$world" "$student" "$teacher")" || { bad "$name: --estimate failed"; continue; }
  if [ -n "$expected" ] && [ "$expected" = "$actual" ]; then
    ok "$name: header estimates are the code's ($(echo "$actual" | wc -l) stages)"
  else
    bad "$name: the header's estimate lines differ from the code's; expected in the header:"
    echo "$actual"
    echo "found:"
    echo "${expected:-(none)}"
  fi
  case "$shapes_done" in *" $shape "*) continue ;; esac
  shapes_done+="$shape "
  # The generated original config counts the published number of parameters.
  want="$("$PY" -c "import sys; sys.path.insert(0, '$SRC/bench'); import make_synthetic_checkpoint as m; print(m.EXPECTED_PARAMS['$shape'])")"
  printf 'model: {path: /m, dtype: bf16}\ndata: {train: /d}\ntrain: {max_steps: 1}\n' > "$WORK/count.yaml"
  got="$("$BIN" validate "$WORK/count.yaml" --no-files --estimate --model-config "$teacher" --json |
         "$PY" -c 'import json, sys; print(int(json.load(sys.stdin)["estimate"]["student_parameters"]))')"
  if [ -n "$want" ] && [ "$got" = "$want" ]; then
    ok "$shape: $got parameters, the published total"
  else
    bad "$shape: mlaforge counts ${got:-?} parameters in the generated config, the real checkpoint has $want"
  fi
done

# The teacher (the original GQA model) is split over the TP ranks too: a tp its KV heads do not allow is
# refused even when the MLA student (KV heads = query heads) would take it.
recipe="$SRC/recipes/r1/llama-3-8b-8xh100.yaml"
if ! "$BIN" validate "$recipe" --no-files --world-size 16 parallel.tp=16 --estimate \
       --model-config "$(config_for llama-3-8b --mla 64 512)" --teacher-config "$(config_for llama-3-8b)" \
       > "$WORK/out.txt" 2>&1 &&
   grep -q "parallel.tp: 16 does not divide the teacher's 32 attention heads and 8 KV heads" "$WORK/out.txt"; then
  ok "estimate refuses a tp the teacher's KV heads do not allow"
else
  bad "estimate with tp 16 and an 8-KV-head teacher"; cat "$WORK/out.txt"
fi

echo "recipes_validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
