#!/usr/bin/env bash
# The main job, end to end, on the embedded default model (SmolLM2-135M-Instruct, a real LLaMA-architecture
# GQA model: 9 query heads, 3 KV heads) on CPU:
#   1. inspect it and convert it to MLA with half the KV cache, showing the perplexity cost;
#   2. fine-tune the converted model with 2 MPI ranks (mlarun --nproc-per-node 2, data parallel) through the
#      two-stage recipe recipes/demo-cpu.yaml: `recover` (self-distillation from the original) then `sft`
#      (SFT on our small R1-style sample of <think> conversations, through the model's chat template), with
#      checkpoints along the way;
#   3. export the last SFT checkpoint as a Hugging Face folder (DeepSeek-V3 format), measure it, and chat with
#      it and with the original (absorbed, latent-cache decode for the MLA model);
#   4. print a summary: perplexities, KV cache per token, each stage's steps and time, where everything is.
# Outputs go to $MLAFORGE_DEMO_OUT (default out/demo); every run starts its training afresh. Needs no Python
# at run time: the numbers come from the commands' --json output and report.json files, read with awk.
# MLAFORGE_SKIP_SETUP=1 skips scripts/setup.sh (the build in $MLAFORGE_BUILD must then be complete).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
OUT="${MLAFORGE_DEMO_OUT:-$ROOT/out/demo}"
[ "${MLAFORGE_SKIP_SETUP:-0}" = 1 ] || "$ROOT/scripts/setup.sh"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute: the recipe resolves relative paths against its own folder
MLAFORGE="$BUILD/bin/mlaforge"
MLARUN="$BUILD/bin/mlarun"
MODEL="$(cat "$BUILD/default_model.txt")"
MLA="$OUT/smollm2-mla"
RUN="$OUT/train"
EXPORTED="$OUT/sft-export"
LOGS="$OUT/logs"
export MLAFORGE_DEFAULT_MODEL="$MODEL" MLAFORGE_DEMO_OUT="$OUT"
mkdir -p "$LOGS"
rm -rf "$RUN" "$EXPORTED"  # a rerun would otherwise skip the finished stages (that is how resuming works)

# Calibration, fine-tuning and evaluation texts never overlap. With the shared TinyStories sample next to
# the checkout: calibrate on paragraphs 201-264, recover on 265-1264, evaluate on the first 40; otherwise
# use the two small texts of our own in recipes/data. The SFT stage's data is always our R1-style sample.
STORIES="$ROOT/../shared/assets/text/tinystories_val_part1.txt"
if [ -f "$STORIES" ]; then
  EVAL=(--text "$STORIES" --max-docs 40 --max-seq-len 256)
  CALIB=(--calib "$STORIES" --calib-skip 200 --calib-docs 64 --eval "$STORIES" --eval-docs 40 --eval-len 256)
  mkdir -p "$OUT/data"
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 264 && NR <= 1264' "$STORIES" > "$OUT/data/train.txt"
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 40' "$STORIES" > "$OUT/data/eval.txt"
  TRAIN=(data.train="$OUT/data/train.txt" data.eval="$OUT/data/eval.txt")
  TEXT_NAME="TinyStories paragraphs 1-40"
else
  EVAL=(--text "$ROOT/recipes/data/demo_eval.txt" --max-seq-len 256)
  CALIB=(--calib "$ROOT/recipes/data/demo_calib.txt" --eval "$ROOT/recipes/data/demo_eval.txt" --eval-len 256)
  TRAIN=()
  TEXT_NAME="recipes/data/demo_eval.txt"
fi

# json_get FILE KEY.PATH: one value of the pretty-printed JSON mlaforge writes (one value per line, two
# spaces per level; arrays indexed from 0: evals.0.perplexity); "?" when absent. A few lines of awk instead
# of a JSON tool, so the demo needs nothing beyond the build.
json_get() {
  [ -f "$1" ] || { echo "?"; return; }
  awk -v want="$2" '
    { line = $0; match(line, /^ */); depth = RLENGTH / 2
      sub(/^ +/, "", line); sub(/,$/, "", line)
      if (line ~ /^[]}]/) next
      if (line ~ /^"[^"]*": /) { key = substr(line, 2, index(line, "\": ") - 2); line = substr(line, index(line, "\": ") + 3) }
      else if (depth > 0) key = count[depth - 1]++
      else key = ""
      path[depth] = key; p = ""
      for (i = 1; i <= depth; i++) p = p (i > 1 ? "." : "") path[i]
      if (line == "{" || line == "[") { count[depth] = 0; next }
      if (p == want) { gsub(/^"|"$/, "", line); print line; found = 1; exit } }
    END { if (!found) print "?" }' "$1"
}
# The last entry of a JSON array: json_last FILE evals perplexity.
json_last() {
  local i=0 v last="?"
  while v="$(json_get "$1" "$2.$i.$3")" && [ "$v" != "?" ]; do last="$v"; i=$((i + 1)); done
  echo "$last"
}
fmt() { case "$1" in ""|"?") echo "?" ;; *) awk -v v="$1" -v f="${2:-%.2f}" 'BEGIN { printf f, v }' ;; esac; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
START=$SECONDS

step "mlaforge inspect (the original GQA model)"
"$MLAFORGE" inspect "$MODEL"
"$MLAFORGE" inspect "$MODEL" --json > "$LOGS/inspect-original.json" 2>/dev/null

step "mlaforge convert: rope key 64 + latent 128 = 192 values/token/layer instead of 384 (half the KV cache)"
t0=$SECONDS
"$MLAFORGE" convert "$MODEL" "$MLA" --rope-dim 64 --kv-lora-rank 128 "${CALIB[@]}" | tee "$LOGS/convert.txt"
CONVERT_S=$((SECONDS - t0))
"$MLAFORGE" inspect "$MLA" --json > "$LOGS/inspect-mla.json" 2>/dev/null
step "mlaforge inspect (the converted MLA model)"
"$MLAFORGE" inspect "$MLA"

step "mlarun --nproc-per-node 2 -- mlaforge train recipes/demo-cpu.yaml: recover (distil the original), then SFT on R1-style conversations"
t0=$SECONDS
"$MLARUN" --nproc-per-node 2 -- "$MLAFORGE" train "$ROOT/recipes/demo-cpu.yaml" "${TRAIN[@]}"
TRAIN_S=$((SECONDS - t0))

step "mlaforge export: the newest SFT checkpoint as a Hugging Face folder (DeepSeek-V3 format)"
"$MLAFORGE" export "$RUN/sft" "$EXPORTED"

step "mlaforge eval (after recover, and the exported model after SFT; the text the conversion was measured on)"
"$MLAFORGE" eval "$RUN/recover/model" "${EVAL[@]}" --json > "$LOGS/eval-recover.json"
"$MLAFORGE" eval "$EXPORTED" "${EVAL[@]}" --json > "$LOGS/eval-final.json"
echo "perplexity after recover $(fmt "$(json_get "$LOGS/eval-recover.json" perplexity)" %.3f)," \
  "after recover + SFT $(fmt "$(json_get "$LOGS/eval-final.json" perplexity)" %.3f) on $(json_get "$LOGS/eval-final.json" tokens) tokens"

PROMPT="Nora has 8 pears and buys 5 more. How many pears does Nora have now?"  # the sample's kind, new numbers
step "mlaforge generate --chat from the original model (greedy, GQA KV cache)"
"$MLAFORGE" generate "$MODEL" --chat --prompt "$PROMPT" --max-new-tokens 64
step "mlaforge generate --chat from the exported model (greedy, latent KV cache: absorbed decode path)"
"$MLAFORGE" generate "$EXPORTED" --chat --prompt "$PROMPT" --max-new-tokens 64

# --- summary ----------------------------------------------------------------------------------------------
CONV="$LOGS/convert.txt"
PPL_ORIG="$(sed -n 's/^perplexity \([0-9.]*\) -> \([0-9.]*\) on .*/\1/p' "$CONV")"
PPL_MLA="$(sed -n 's/^perplexity \([0-9.]*\) -> \([0-9.]*\) on .*/\2/p' "$CONV")"
REC="$RUN/recover/report.json"
SFT="$RUN/sft/report.json"
kv_values() { awk -v l="$(json_get "$1" layers)" -v v="$(json_get "$1" kv_cache_values_per_token_per_layer)" 'BEGIN { print l * v }'; }
kv_kib() { fmt "$(awk -v b="$(json_get "$1" kv_cache_bytes_per_token.bfloat16.total_bytes)" 'BEGIN { print b / 1024 }')"; }
stage_row() {  # stage_row NAME REPORT WHAT_THE_EVAL_IS
  printf '%-9s %5s %9s s %8s %5s %10s -> %-6s %8s   %s\n' "$1" "$(json_get "$2" steps)" \
    "$(fmt "$(json_get "$2" train_seconds)" %.0f)" "$(fmt "$(json_get "$2" tokens_per_second)" %.0f)" \
    "$(json_get "$2" world_size)" "$(fmt "$(json_get "$2" evals.0.perplexity)")" \
    "$(fmt "$(json_last "$2" evals perplexity)")" "$(fmt "$(json_get "$2" teacher.perplexity)")" "$3"
}
step "summary"
{
  printf '%-34s %12s %14s %14s %20s\n' "" "original GQA" "converted MLA" "after recover" "after recover + SFT"
  printf '%-34s %12s %14s %14s %20s\n' "perplexity (mlaforge eval)" "$(fmt "$PPL_ORIG")" "$(fmt "$PPL_MLA")" \
    "$(fmt "$(json_get "$LOGS/eval-recover.json" perplexity)")" "$(fmt "$(json_get "$LOGS/eval-final.json" perplexity)")"
  printf '%-34s %12s %14s\n' "KV cache values per token" "$(kv_values "$LOGS/inspect-original.json")" \
    "$(kv_values "$LOGS/inspect-mla.json")"
  printf '%-34s %12s %14s\n' "KV cache KiB per token (bf16)" "$(kv_kib "$LOGS/inspect-original.json")" \
    "$(kv_kib "$LOGS/inspect-mla.json")"
  echo "(perplexity on $TEXT_NAME, 256 tokens per document; KV cache over all $(json_get "$LOGS/inspect-original.json" layers) layers)"
  echo
  printf '%-9s %5s %11s %8s %5s %20s %8s   %s\n' stage steps "loop time" tokens/s ranks "eval ppl start/end" original "eval data"
  stage_row recover "$REC" "the text above, packed"
  stage_row sft "$SFT" "8 held-out R1-style conversations"
  echo
  echo "time: convert ${CONVERT_S} s, training ${TRAIN_S} s (both stages with evaluations, checkpoints, exports), whole demo $((SECONDS - START)) s"
  echo "converted model   $MLA"
  echo "run folder        $RUN/{recover,sft}: recipe.yaml, metrics.jsonl, report.json, model/ (the stage's export)"
  echo "loss curves       $RUN/recover/loss.png, $RUN/sft/loss.png"
  echo "checkpoints       $(cd "$RUN" && echo recover/step-* sft/step-*) (in $RUN)"
  echo "exported model    $EXPORTED (mlaforge export of the newest sft checkpoint)"
} | tee "$OUT/summary.txt"
