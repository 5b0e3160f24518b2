#!/usr/bin/env bash
# End-to-end checks of the mlaforge binary: real outputs on real checkpoints, and bad input that must
# produce one clear error line naming the culprit and exit status 1 (never a crash or a hang).
#   cli_test.sh MLAFORGE ASSETS_DIR PYTHON
set -uo pipefail
BIN="$1"
ASSETS="$2"
PY="${3:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

# expect_error NAME REGEX -- command...: exit status 1, stderr is exactly one line matching REGEX.
expect_error() {
  local name="$1" regex="$2"
  shift 3
  timeout 120 "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  local lines
  lines=$(grep -vc '^\[' "$WORK/err")  # ignore timestamped log lines
  if [ "$rc" = 1 ] && [ "$lines" = 1 ] && grep -Eq "$regex" "$WORK/err"; then
    ok "$name"
  else
    bad "$name (exit $rc, stderr: $(head -c 400 "$WORK/err"))"
  fi
}

# --- bad input -------------------------------------------------------------------------------------
expect_error missing-model "no such file or directory" -- "$BIN" inspect "$WORK/nope"
mkdir -p "$WORK/empty"
expect_error folder-without-config "no config.json" -- "$BIN" inspect "$WORK/empty"
mkdir -p "$WORK/badjson" && echo '{"model_type": "llama",' > "$WORK/badjson/config.json"
expect_error config-not-json "badjson/config.json: not valid JSON" -- "$BIN" inspect "$WORK/badjson"
mkdir -p "$WORK/family" && echo '{"model_type": "gpt_neox", "vocab_size": 10}' > "$WORK/family/config.json"
expect_error unknown-family "unsupported model_type 'gpt_neox'" -- "$BIN" inspect "$WORK/family"
mkdir -p "$WORK/qwen3" && echo '{"model_type": "qwen3"}' > "$WORK/qwen3/config.json"
expect_error qwen3-refused "QK-norm" -- "$BIN" inspect "$WORK/qwen3"
mkdir -p "$WORK/heads" && cat > "$WORK/heads/config.json" <<'JSON'
{"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
 "num_attention_heads": 4, "num_key_value_heads": 3}
JSON
expect_error inconsistent-heads "num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)" -- "$BIN" inspect "$WORK/heads"
printf 'GGUF\x03\x00\x00\x00garbage' > "$WORK/bad.gguf"
expect_error corrupt-gguf "bad.gguf" -- "$BIN" inspect "$WORK/bad.gguf"
head -c 100 /dev/urandom > "$WORK/random.bin"
expect_error corrupt-llama2c "random.bin" -- "$BIN" inspect "$WORK/random.bin"
printf x > "$WORK/x.safetensors"
expect_error bare-safetensors "bare safetensors file has no config" -- "$BIN" inspect "$WORK/x.safetensors"

TINY="$ASSETS/models/tiny-random-llama-2"
if [ -d "$TINY" ]; then
  mkdir -p "$WORK/trunc" && cp "$TINY/config.json" "$WORK/trunc/"
  head -c 20000 "$TINY/model.safetensors" > "$WORK/trunc/model.safetensors"
  expect_error truncated-safetensors "trunc/model.safetensors" -- "$BIN" inspect "$WORK/trunc"
  mkdir -p "$WORK/shape" && cp "$TINY/model.safetensors" "$WORK/shape/"
  sed 's/"hidden_size": 16/"hidden_size": 32/' "$TINY/config.json" > "$WORK/shape/config.json"
  printf 'Some text to score.\n' > "$WORK/doc.txt"
  expect_error wrong-shape "tensor 'model.embed_tokens.weight' has shape" -- "$BIN" eval "$WORK/shape" --text "$WORK/doc.txt" --tokenizer "$ASSETS/tokenizers/llama2/tokenizer.json"
fi

STORIES="$ASSETS/models/stories260K"
if [ -d "$STORIES" ]; then
  M="$STORIES/stories260K.bin"
  T="$STORIES/tok512.bin"
  expect_error bad-dtype "unknown dtype 'float8'" -- "$BIN" eval "$M" --tokenizer "$T" --text "$ASSETS/text/tinystories_val_part1.txt" --dtype float8
  expect_error missing-text "nope.txt: cannot open" -- "$BIN" eval "$M" --tokenizer "$T" --text "$WORK/nope.txt"
  printf '{"text": "a fine row"}\n{"text": broken\n' > "$WORK/rows.jsonl"
  expect_error malformed-jsonl "rows.jsonl:2: malformed JSON row" -- "$BIN" eval "$M" --tokenizer "$T" --text "$WORK/rows.jsonl"
  printf '{"content": "no text field"}\n' > "$WORK/field.jsonl"
  expect_error jsonl-missing-field "field.jsonl:1: row has no 'text' field" -- "$BIN" eval "$M" --tokenizer "$T" --text "$WORK/field.jsonl"

  # --- real outputs on the real stories260K model (golden facts from ../shared/assets/README.md) ---
  if "$BIN" eval "$M" --tokenizer "$STORIES/tok512.model" --text "$ASSETS/text/tinystories_val_part1.txt" \
       --max-docs 20 --json > "$WORK/eval.json" 2>"$WORK/err" &&
     "$PY" - "$WORK/eval.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["tokens"] == 2099, r
assert abs(r["mean_nll"] - 1.3798) < 5e-4, r
PYEOF
  then ok "eval-stories260K-nll"; else bad "eval-stories260K-nll ($(cat "$WORK/eval.json" "$WORK/err" | head -c 400))"; fi

  if "$BIN" generate "$M" --tokenizer "$T" --prompt "" --max-new-tokens 40 --json > "$WORK/gen.json" 2>"$WORK/err" &&
     "$PY" - "$WORK/gen.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["text"].lstrip().startswith("Once upon a time, there was a little girl named Lily."), r["text"]
PYEOF
  then ok "generate-stories260K-greedy"; else bad "generate-stories260K-greedy ($(head -c 400 "$WORK/gen.json"))"; fi

  if "$BIN" inspect "$M" --tokenizer "$T" --json > "$WORK/inspect.json" 2>"$WORK/err" &&
     "$PY" - "$WORK/inspect.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["family"] == "llama" and r["layers"] == 5 and r["num_key_value_heads"] == 4, r
# 2 (K and V) x 4 KV heads x head_dim 8 = 64 values per token per layer
assert r["kv_cache_values_per_token_per_layer"] == 64, r
assert r["kv_cache_bytes_per_token"]["float32"]["total_bytes"] == 64 * 4 * 5, r
PYEOF
  then ok "inspect-stories260K"; else bad "inspect-stories260K ($(head -c 400 "$WORK/inspect.json"))"; fi
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
