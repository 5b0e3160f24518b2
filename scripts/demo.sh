#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct, a real LLaMA-architecture GQA model:
# 9 query heads, 3 KV heads): inspect it, measure its perplexity, generate from it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MLAFORGE_BUILD:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
MLAFORGE="$BUILD/bin/mlaforge"
MODEL="$(cat "$BUILD/default_model.txt")"
TEXT="$ROOT/recipes/data/demo_eval.txt"
[ -f "$ROOT/../shared/assets/text/tinystories_val_part1.txt" ] && TEXT="$ROOT/../shared/assets/text/tinystories_val_part1.txt"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "mlaforge inspect $MODEL"
"$MLAFORGE" inspect "$MODEL"
step "mlaforge eval (first 40 documents of $(basename "$TEXT"), up to 256 tokens each)"
"$MLAFORGE" eval "$MODEL" --text "$TEXT" --max-docs 40 --max-seq-len 256
step "mlaforge generate (greedy, KV cache)"
"$MLAFORGE" generate "$MODEL" --prompt "The three primary colors are" --max-new-tokens 48
