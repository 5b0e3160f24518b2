#!/usr/bin/env bash
# The demo's pieces that can be checked cheaply without the default model (scripts/demo.sh itself takes
# minutes and the 135M model; it is run by hand):
#   1. recipes/data/r1_sample*.jsonl are exactly what recipes/data/make_r1_sample.py writes, 64 + 8
#      conversations whose every assistant turn is "<think>\n...\n</think>\n\n<answer>";
#   2. recipes/demo-cpu.yaml validates for its world size 2 (both stages; the converted model is made by
#      the demo, so files are not checked);
#   3. the demo recipe's two stages run for real, 2 steps each, with stories260K standing in for the models
#      (a GQA model: every weight trains instead of up_proj; it has no chat template, so the sft stage
#      names the mistral layout, and its character-level vocabulary needs 512 tokens per conversation): the sft stage reads all 64 conversations, trains on the assistant turns
#      only, evaluates on the 8 held-out ones, and `mlaforge export` of its run folder equals the run's
#      own export;
#   4. the summary of scripts/demo.sh reads report.json with awk (json_get / json_last): the same numbers
#      as Python's json module.
#   demo_recipe_test.sh MLAFORGE SOURCE_DIR ASSETS_DIR PYTHON     (exit 77: stories260K not found)
set -uo pipefail
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"  # absolute: the test works in a temporary folder
SRC="$(cd "$2" && pwd)"
ASSETS="$3"
PY="$4"
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
if [ ! -f "$MODEL" ] || [ ! -f "$TXT" ]; then
  echo "skipped: $MODEL or $TXT not found"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
export MLAFORGE_NUM_THREADS=1 OMP_NUM_THREADS=1

# --- 1. the embedded R1-style sample ---------------------------------------------------------------------
mkdir -p "$WORK/sample"
if "$PY" "$SRC/recipes/data/make_r1_sample.py" "$WORK/sample" > /dev/null &&
   cmp -s "$WORK/sample/r1_sample.jsonl" "$SRC/recipes/data/r1_sample.jsonl" &&
   cmp -s "$WORK/sample/r1_sample_eval.jsonl" "$SRC/recipes/data/r1_sample_eval.jsonl"; then
  ok "r1 sample: the committed files are make_r1_sample.py's output"
else
  bad "r1 sample: recipes/data/r1_sample*.jsonl differ from make_r1_sample.py's output (rerun it)"
fi
if "$PY" - "$SRC/recipes/data/r1_sample.jsonl" "$SRC/recipes/data/r1_sample_eval.jsonl" <<'PYEOF'; then ok "r1 sample: 64 + 8 conversations, every answer thinks first"; else bad "r1 sample: layout"; fi
import json, re, sys
counts = []
for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    counts.append(len(rows))
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["user", "assistant"], ["user", "assistant"] * 2), roles
        for m in row["messages"][1::2]:
            assert re.fullmatch(r"<think>\n[^<]+\n</think>\n\n[^<\n]+", m["content"]), m["content"]
assert counts == [64, 8], counts
PYEOF

# --- 2. the recipe validates for 2 ranks -----------------------------------------------------------------
if MLAFORGE_DEFAULT_MODEL=/models/default.gguf "$BIN" validate "$SRC/recipes/demo-cpu.yaml" --world-size 2 --no-files \
     > "$WORK/validate.txt" 2>&1 && grep -q "valid, 2 stages: recover sft" "$WORK/validate.txt" &&
   grep -q "micro_batch_size 1 x grad_accumulation 1 x dp 2 = global_batch_size 2" "$WORK/validate.txt"; then
  ok "demo recipe validates for world size 2"
else
  bad "demo recipe validation"; cat "$WORK/validate.txt"
fi

# --- 3. both stages, 2 steps each, on stories260K ---------------------------------------------------------
cd "$WORK" || exit 1
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 8' "$TXT" > eval.txt
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 8 && NR <= 60' "$TXT" > train.txt
if MLAFORGE_DEFAULT_MODEL="$MODEL" "$BIN" train "$SRC/recipes/demo-cpu.yaml" model.path="$MODEL" model.trainable=all \
     data.train=train.txt data.eval=eval.txt data.max_seq_len=128 train.output_dir=run train.max_steps=2 \
     checkpoint.every=1 log.progress=never stages.sft.train.max_steps=2 stages.sft.checkpoint.every=1 \
     stages.sft.data.chat_template=mistral stages.sft.data.max_seq_len=512 > train.log 2>&1 &&
   [ -f run/recover/model/config.json ] && [ -f run/sft/model/config.json ] &&
   [ -d run/recover/step-0000001 ] && [ -d run/sft/step-0000001 ] && [ -f run/sft/loss.png ]; then
  ok "demo recipe: recover then sft, 2 steps each, checkpoints and exports"
else
  bad "demo recipe run"; tail -20 train.log
fi
if "$PY" - run/sft/report.json train.log <<'PYEOF'; then ok "sft stage: 64 conversations, assistant turns trained, held-out eval"; else bad "sft stage report"; fi
import json, math, re, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
m = re.search(r"data\.train: 64 samples, (\d+) tokens \((\d+) trained\)", log)
assert m, "no 'data.train: 64 samples' line"
tokens, trained = int(m.group(1)), int(m.group(2))
print(f"sft data: {tokens} tokens, {trained} trained")
assert 0 < trained < tokens / 2 + tokens / 4, (tokens, trained)  # prompts and headers are not trained
assert re.search(r"data\.eval: 8 samples", log), "no held-out eval of 8 conversations"
assert r["steps"] == 2 and len(r["evals"]) == 2, r
for e in r["evals"] + [r["teacher"]]:
    assert math.isfinite(e["perplexity"]) and e["perplexity"] > 1, e
# The sft stage started from the recover stage's export, and distils from the base's teacher.
recipe = open("run/sft/recipe.yaml").read()
assert re.search(r"path: .*run/recover/model", recipe), recipe
PYEOF
if "$BIN" export run/sft exported > export.log 2>&1 && "$PY" - exported run/sft/model <<'PYEOF'; then
import sys
from safetensors.numpy import load_file
a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:3])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
for name in a:
    assert a[name].dtype == b[name].dtype and (a[name] == b[name]).all(), name
print(f"{len(a)} tensors bitwise equal")
PYEOF
  ok "mlaforge export of the sft run folder equals the run's own export"
else
  bad "export of the sft run folder"; tail -5 export.log
fi

# --- 4. the demo's JSON reading -------------------------------------------------------------------------
sed -n '/^json_get() {/,/^}/p; /^json_last() {/,/^}/p' "$SRC/scripts/demo.sh" > json.sh
# shellcheck disable=SC1091
. ./json.sh
got="$(json_get run/sft/report.json steps) $(json_get run/sft/report.json evals.0.perplexity) $(json_last run/sft/report.json evals perplexity) $(json_get run/sft/report.json teacher.perplexity) $(json_get run/sft/report.json no.such.key)"
want="$("$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["steps"], repr(r["evals"][0]["perplexity"]), repr(r["evals"][-1]["perplexity"]), repr(r["teacher"]["perplexity"]), "?")' run/sft/report.json)"
if [ -n "$got" ] && awk -v a="$got" -v b="$want" 'BEGIN { n = split(a, x, " "); split(b, y, " "); for (i = 1; i <= n; i++) if (x[i] != y[i] && (x[i] + 0 == 0 || (x[i] - y[i]) / y[i] > 1e-12 || (y[i] - x[i]) / y[i] > 1e-12)) exit 1; exit n != 5 }'; then
  ok "demo.sh json_get/json_last read report.json as Python does ($got)"
else
  bad "demo.sh json_get: '$got', Python: '$want'"
fi

echo "demo_recipe: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
