#!/usr/bin/env bash
# `mlaforge chat` and the batched / chat-wrapped `mlaforge generate` end to end on the default model
# (SmolLM2-135M-Instruct GGUF, ChatML template with its default system prompt), greedy:
#   * two user turns piped in: real answers (turn 1 names Paris), turn 2 starts from the cache (its prompt
#     reuses at least the whole turn-1 prompt and prefills less than half of itself), stats on stderr;
#   * turn 1 equals `generate --chat` on the same question token for token (the cache changes nothing);
#   * /reset gives the first answer again from an empty cache, /exit stops reading;
#   * `generate --batch-prompts` (3 prompts of different lengths, one left-padded batch) equals one
#     `generate --prompt` run per line;
#   * a template that is not the model's is refused with one error line.
#   chat_test.sh MLAFORGE [MODEL]   (exit 77 = skipped: no default model)
set -uo pipefail
BIN="$1"
MODEL="${2:-${MLAFORGE_SMOLLM2_GGUF:-}}"
BUILD_DIR="$(cd "$(dirname "$BIN")/.." && pwd)"
if [ -z "$MODEL" ] && [ -f "$BUILD_DIR/default_model.txt" ]; then MODEL="$(cat "$BUILD_DIR/default_model.txt")"; fi
if [ -z "$MODEL" ]; then MODEL="${MLAFORGE_CACHE:-$HOME/.cache/mlaforge}/models/SmolLM2-135M-Instruct.Q4_1.gguf"; fi
if [ ! -f "$MODEL" ]; then
  echo "SKIP: default model not found ($MODEL); scripts/setup.sh fetches it"
  exit 77
fi
PY="$(command -v python3)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
N=24

# --- two turns, JSON ------------------------------------------------------------------------------------
printf 'What is the capital of France?\nAnd what is the capital of Italy?\n' |
  "$BIN" chat "$MODEL" --max-new-tokens $N --json > "$WORK/turns.jsonl" 2> "$WORK/turns.err"
rc=$?
if [ "$rc" = 0 ] && "$PY" - "$WORK/turns.jsonl" <<'PYEOF'; then ok "chat: two turns, the second from the cache"; else bad "chat: two turns (exit $rc): $(tail -3 "$WORK/turns.err")"; fi
import json, sys
turns = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert len(turns) == 2, turns
t1, t2 = turns
print("turn 1:", repr(t1["reply"]), t1["stop_reason"], "prompt", t1["prompt_tokens"])
print("turn 2:", repr(t2["reply"]), t2["stop_reason"], "prompt", t2["prompt_tokens"], "reused", t2["reused_tokens"],
      "prefilled", t2["prefilled_tokens"])
assert "Paris" in t1["reply"], t1["reply"]
assert t2["reply"].strip(), "empty second reply"
assert t1["reused_tokens"] == 0
# The ChatML rendering only appends: the whole turn-1 prompt (system + user + assistant header) is reused.
assert t2["reused_tokens"] >= t1["prompt_tokens"], (t2["reused_tokens"], t1["prompt_tokens"])
assert t2["prefilled_tokens"] < t2["prompt_tokens"] / 2, t2
assert t2["prompt_tokens"] == t2["reused_tokens"] + t2["prefilled_tokens"]
assert t2["kv_cache_bytes"] > 0 and t2["cached_tokens"] >= t2["prompt_tokens"]
PYEOF

# --- the same in text mode: streamed replies on stdout, one stats line per turn on stderr ---------------
printf 'What is the capital of France?\nAnd what is the capital of Italy?\n' |
  "$BIN" chat "$MODEL" --max-new-tokens $N > "$WORK/text.out" 2> "$WORK/text.err"
rc=$?
if [ "$rc" = 0 ] && "$PY" - "$WORK/turns.jsonl" "$WORK/text.out" "$WORK/text.err" <<'PYEOF'; then ok "chat: text mode streams the same replies, stats on stderr"; else bad "chat: text mode (exit $rc)"; fi
import json, re, sys
turns = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = open(sys.argv[2]).read()
err = open(sys.argv[3]).read()
assert out == "".join(t["reply"] + "\n" for t in turns), (out, [t["reply"] for t in turns])
stats = re.findall(r"\[(\d+) tokens \((\w+)\) \| prompt (\d+) tokens: (\d+) cached, (\d+) prefilled .* tok/s \| KV cache .* for (\d+) tokens", err)
assert len(stats) == 2, err
assert int(stats[1][3]) == turns[1]["reused_tokens"], (stats, turns[1])
PYEOF

# --- turn 1 equals generate --chat ----------------------------------------------------------------------
"$BIN" generate "$MODEL" --chat --prompt 'What is the capital of France?' --max-new-tokens $N --json \
  > "$WORK/gen.json" 2> "$WORK/gen.err"
rc=$?
if [ "$rc" = 0 ] && "$PY" - "$WORK/turns.jsonl" "$WORK/gen.json" <<'PYEOF'; then ok "chat turn 1 == generate --chat"; else bad "generate --chat (exit $rc): $(tail -2 "$WORK/gen.err")"; fi
import json, sys
t1 = json.loads(open(sys.argv[1]).readline())
g = json.load(open(sys.argv[2]))
assert g["tokens"] == t1["tokens"], (g["tokens"], t1["tokens"])
assert len(g["prompt_tokens"]) == t1["prompt_tokens"]
PYEOF

# --- /reset and /exit -----------------------------------------------------------------------------------
printf 'What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nNever answered\n' |
  "$BIN" chat "$MODEL" --max-new-tokens $N --json > "$WORK/reset.jsonl" 2> "$WORK/reset.err"
rc=$?
if [ "$rc" = 0 ] && "$PY" - "$WORK/reset.jsonl" <<'PYEOF'; then ok "chat: /reset starts over, /exit stops"; else bad "chat /reset /exit (exit $rc): $(tail -2 "$WORK/reset.err")"; fi
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert [l.get("event") for l in lines] == [None, "reset", None], lines
a, b = lines[0], lines[2]
assert b["tokens"] == a["tokens"] and b["reused_tokens"] == 0 and b["prompt_tokens"] == a["prompt_tokens"], (a, b)
PYEOF

# --- generate --batch-prompts == one generate per prompt ------------------------------------------------
printf 'Once upon a time\nThe three primary colours are red, yellow and\n\nIn 1969,\n' > "$WORK/prompts.txt"
"$BIN" generate "$MODEL" --batch-prompts "$WORK/prompts.txt" --max-new-tokens 12 --json > "$WORK/batch.json" 2> "$WORK/batch.err"
rc=$?
for p in 'Once upon a time' 'The three primary colours are red, yellow and' 'In 1969,'; do
  "$BIN" generate "$MODEL" --prompt "$p" --max-new-tokens 12 --json >> "$WORK/singles.jsonl" 2>> "$WORK/batch.err"
done
if [ "$rc" = 0 ] && "$PY" - "$WORK/batch.json" "$WORK/singles.jsonl" <<'PYEOF'; then ok "generate --batch-prompts == one generate per prompt"; else bad "generate --batch-prompts (exit $rc): $(tail -2 "$WORK/batch.err")"; fi
import json, sys
batch = json.load(open(sys.argv[1]))
# print_json writes indented documents: split the concatenation with a raw decoder.
text, singles, pos, dec = open(sys.argv[2]).read(), [], 0, json.JSONDecoder()
while pos < len(text):
    if text[pos].isspace():
        pos += 1
        continue
    obj, pos = dec.raw_decode(text, pos)
    singles.append(obj)
seqs = batch["sequences"]
assert len(seqs) == 3 == len(singles), (len(seqs), len(singles))
lengths = {len(s["prompt_tokens"]) for s in seqs}
assert len(lengths) == 3, lengths  # really different lengths, so the batch was padded
for s, one in zip(seqs, singles):
    assert s["prompt_tokens"] == one["prompt_tokens"], (s, one)
    assert s["tokens"] == one["tokens"], (s["prompt"], s["tokens"], one["tokens"])
    print(repr(s["prompt"]), "->", repr(s["text"]))
assert batch["padded_prompt_length"] == max(lengths)
PYEOF

# --- a template that is not this model's ------------------------------------------------------------------
echo hi | "$BIN" chat "$MODEL" --chat-template llama3 > "$WORK/out" 2> "$WORK/err"
rc=$?
if [ "$rc" = 1 ] && grep -q "mlaforge: error: .*llama3" "$WORK/err" && [ "$(grep -vc '^\[' "$WORK/err")" = 1 ]; then
  ok "chat: foreign template refused"
else
  bad "chat: foreign template (exit $rc): $(cat "$WORK/err")"
fi

echo "chat_test: $passed passed, $failed failed"
[ "$failed" = 0 ]
