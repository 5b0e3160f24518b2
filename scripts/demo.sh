#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct, a real LLaMA-architecture GQA model:
# 9 query heads, 3 KV heads): inspect it, measure its perplexity, convert it to MLA with half the KV cache,
# fine-tune the converted model's up-projections by distilling the original's logits (recipes/demo-cpu.yaml),
# which writes it as a Hugging Face DeepSeek-V3-format folder, measure again, and generate from the
# fine-tuned model through the absorbed (latent-cache) decode path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
OUT="${MLAFORGE_DEMO_OUT:-$ROOT/out/demo}"
"$ROOT/scripts/setup.sh"
MLAFORGE="$BUILD/bin/mlaforge"
MODEL="$(cat "$BUILD/default_model.txt")"
MLA="$OUT/smollm2-mla"
TUNED="$OUT/train/model"
export MLAFORGE_DEFAULT_MODEL="$MODEL" MLAFORGE_DEMO_OUT="$OUT"

# Calibration and evaluation texts never overlap. With the shared TinyStories sample next to the
# checkout, calibrate on paragraphs 200-263 and evaluate on the first 40; otherwise use the two small
# texts of our own in recipes/data.
STORIES="$ROOT/../shared/assets/text/tinystories_val_part1.txt"
if [ -f "$STORIES" ]; then
  EVAL=(--text "$STORIES" --max-docs 40 --max-seq-len 256)
  CALIB=(--calib "$STORIES" --calib-skip 200 --calib-docs 64 --eval "$STORIES" --eval-docs 40 --eval-len 256)
  # Fine-tuning text: paragraphs 265-1264, evaluation: the same first 40 (neither overlaps calibration).
  mkdir -p "$OUT/data"
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR > 264 && NR <= 1264' "$STORIES" > "$OUT/data/train.txt"
  awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 40' "$STORIES" > "$OUT/data/eval.txt"
  TRAIN=(data.train="$OUT/data/train.txt" data.eval="$OUT/data/eval.txt")
else
  EVAL=(--text "$ROOT/recipes/data/demo_eval.txt" --max-seq-len 256)
  CALIB=(--calib "$ROOT/recipes/data/demo_calib.txt" --eval "$ROOT/recipes/data/demo_eval.txt" --eval-len 256)
  TRAIN=()
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "mlaforge inspect (the original GQA model)"
"$MLAFORGE" inspect "$MODEL"
step "mlaforge eval (original)"
"$MLAFORGE" eval "$MODEL" "${EVAL[@]}"
step "mlaforge convert: rope key 64 + latent 128 = 192 values/token/layer instead of 384 (half the KV cache)"
"$MLAFORGE" convert "$MODEL" "$MLA" --rope-dim 64 --kv-lora-rank 128 "${CALIB[@]}"
step "mlaforge inspect (the converted MLA model)"
"$MLAFORGE" inspect "$MLA"
step "mlaforge eval (converted, before fine-tuning)"
"$MLAFORGE" eval "$MLA" "${EVAL[@]}"
step "mlaforge train: recover the converted model (MLA up-projections only, distilling the original's logits)"
"$MLAFORGE" train "$ROOT/recipes/demo-cpu.yaml" "${TRAIN[@]}"
step "mlaforge eval (fine-tuned MLA model, exported as a DeepSeek-V3-format folder)"
"$MLAFORGE" eval "$TUNED" "${EVAL[@]}"
PROMPT="Once upon a time, in a small village by the sea,"
step "mlaforge generate from the original model (greedy, GQA KV cache)"
"$MLAFORGE" generate "$MODEL" --prompt "$PROMPT" --max-new-tokens 48
step "mlaforge generate from the fine-tuned MLA model (greedy, latent KV cache: absorbed decode path)"
"$MLAFORGE" generate "$TUNED" --prompt "$PROMPT" --max-new-tokens 48
printf '\nConverted model: %s\nFine-tuned model: %s (run folder %s: recipe.yaml, metrics.jsonl, loss.png, report.json)\n' \
  "$MLA" "$TUNED" "$OUT/train"
