#!/usr/bin/env bash
# `mlaforge export CHECKPOINT OUT` end to end (trainer/checkpoint_export.h), on the real stories260K model:
#   a. GQA (llama2.c source): runs training `all`, `*.attn.*` (frozen weights then come from the base model)
#      and bf16 (fp32 masters); each final checkpoint exported is bitwise the run's own end-of-run export
#      (OUT/model, source dtype), config.json equal, generation_config.json written; --shard-size 100KB gives
#      several shards + an index that transformers loads to the same weights; --dtype bfloat16; a run
#      folder whose newest checkpoint is corrupt exports the previous one, naming the skipped file;
#   b. MLA: stories260K converted in deployable mode (DeepSeek-V3 folder), up_proj trained, exported:
#      transformers' DeepseekV3ForCausalLM loads the export and computes mlaforge's numbers (mean NLL of
#      `mlaforge eval` on held-out paragraphs within 1e-4 relative, same token count, same greedy tokens);
#   c. errors, one line naming the culprit: corrupt (checksum) / incomplete checkpoint, not a checkpoint,
#      base model missing, another model (shape mismatch, tensor not in the model, edited config =
#      fingerprint), bad --shard-size.
#   export_test.sh MLAFORGE ASSETS_DIR PYTHON
set -uo pipefail
BIN="$1"
ASSETS="$2"
PY="${3:-python3}"
MODEL="$ASSETS/models/stories260K/stories260K.bin"
TXT="$ASSETS/text/tinystories_val_part1.txt"
if [ ! -f "$MODEL" ] || [ ! -f "$TXT" ]; then
  echo "skipped: $MODEL or $TXT not found"
  exit 77
fi
if ! "$PY" -c 'import transformers, safetensors, sentencepiece, numpy' 2>/dev/null; then
  echo "skipped: $PY lacks transformers/safetensors/sentencepiece/numpy"
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

# expect_error NAME REGEX -- command...: exit status 1, one error line on stderr matching REGEX.
expect_error() {
  local name="$1" regex="$2"
  shift 3
  timeout 120 "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ "$rc" = 1 ] && [ "$(grep -c '^mlaforge: error:' "$WORK/err")" = 1 ] && grep -Eq -- "$regex" "$WORK/err"; then
    ok "$name"
  else
    bad "$name (exit $rc, stderr: $(grep -v '^\[' "$WORK/err" | head -c 600))"
  fi
}

# same_weights A B: every tensor of folder A equals folder B's bitwise (names, dtypes, shapes, bytes).
same_weights() {
  "$PY" - "$1" "$2" <<'PYEOF'
import glob, sys
import numpy as np
from safetensors.numpy import load_file
def load(d):
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        out.update(load_file(f))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))[:5]
diff = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
assert not diff, f"{len(diff)} of {len(a)} tensors differ: {diff[:3]}"
print(f"  {len(a)} tensors bitwise equal")
PYEOF
}

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
log: {progress: never, png: false, tensorboard: false}
YAML

# --- a. GQA: bitwise the run's own export -------------------------------------------------------------
"$BIN" train r.yaml train.output_dir=run-all > run-all.log 2>&1 || { tail -20 run-all.log; echo "FAIL: training failed"; exit 1; }
if "$BIN" export run-all exp-all --json > exp-all.json 2> exp-all.err &&
   "$PY" - exp-all.json <<'PYEOF' && same_weights exp-all run-all/model; then
import json, sys
r = json.load(open(sys.argv[1]))
assert r["step"] == 12 and r["checkpoint"].endswith("step-0000012"), r
assert r["fingerprint_checked"] and r["dtype"] == "float32" and r["family"] == "llama" and not r["mla"], r
# stories260K: embedding (tied head), final norm, 5 layers x (2 norms + q,k,v,o + gate,up,down) = 47 tensors
assert r["tensors"] == 47 and r["from_checkpoint"] == 47 and r["from_model"] == 0, r
assert r["weight_files"] == ["model.safetensors"] and "model.safetensors.index.json" not in r["files"], r
assert "config.json" in r["files"] and "generation_config.json" in r["files"], r
print(f"  {r['tensors']} tensors from step {r['step']}, {r['tensor_bytes']} bytes")
PYEOF
  ok "export-all-bitwise-equals-run-export"
else
  bad "export-all-bitwise-equals-run-export ($(head -c 600 exp-all.err))"
fi
if "$PY" - exp-all run-all/model <<'PYEOF'; then
import json, sys
a, b = sys.argv[1], sys.argv[2]
assert json.load(open(f"{a}/config.json")) == json.load(open(f"{b}/config.json")), "config.json differs"
g = json.load(open(f"{a}/generation_config.json"))
assert g == {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}, g
print("  config.json equal; generation_config", g)
PYEOF
  ok "export-config-and-generation-config"
else
  bad "export-config-and-generation-config"
fi

# Frozen weights: only the attention trains, the rest comes from the base model.
"$BIN" train r.yaml 'model.trainable=*.attn.*' train.max_steps=4 train.output_dir=run-attn > run-attn.log 2>&1 ||
  { tail -20 run-attn.log; echo "FAIL: training failed"; exit 1; }
if "$BIN" export run-attn/step-0000004 exp-attn --json > exp-attn.json 2> exp-attn.err &&
   "$PY" -c 'import json,sys; r=json.load(open("exp-attn.json")); assert (r["from_checkpoint"], r["from_model"]) == (20, 27), r' &&
   same_weights exp-attn run-attn/model; then
  ok "export-frozen-from-base-model-bitwise (20 trained + 27 frozen tensors)"
else
  bad "export-frozen-from-base-model-bitwise ($(head -c 600 exp-attn.err exp-attn.json))"
fi

# bf16 mixed precision: the checkpoint holds the fp32 masters, as the run's export does.
"$BIN" train r.yaml model.dtype=bf16 train.max_steps=4 train.output_dir=run-bf16 > run-bf16.log 2>&1 ||
  { tail -20 run-bf16.log; echo "FAIL: training failed"; exit 1; }
if "$BIN" export run-bf16 exp-bf16 > exp-bf16.out 2> exp-bf16.err && same_weights exp-bf16 run-bf16/model; then
  ok "export-bf16-run-masters-bitwise"
else
  bad "export-bf16-run-masters-bitwise ($(head -c 600 exp-bf16.err))"
fi

# Shards: several files and an index, which transformers loads to the same weights.
if "$BIN" export run-all exp-shards --shard-size 100KB --json > exp-shards.json 2> exp-shards.err &&
   same_weights exp-shards exp-all && "$PY" - exp-shards exp-all <<'PYEOF'; then
import glob, json, os, sys
import torch, transformers
from safetensors.torch import load_file
d, single = sys.argv[1], sys.argv[2]
r = json.load(open(d + ".json"))
index = json.load(open(f"{d}/model.safetensors.index.json"))
shards = sorted(set(index["weight_map"].values()))
n = len(shards)
assert n >= 3 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], shards
assert shards == r["weight_files"] and not os.path.exists(f"{d}/model.safetensors"), (shards, r["weight_files"])
ref = load_file(f"{single}/model.safetensors")
assert set(index["weight_map"]) == set(ref), "index does not list every tensor"
assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ref.values())
for f in shards:
    assert os.path.getsize(f"{d}/{f}") < 100_000 + 70_000, f  # one 64 KB embedding may exceed the limit alone
model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
state = model.state_dict()
worst = max((state[k] - v).abs().max().item() for k, v in ref.items())
assert worst == 0, worst
print(f"  {n} shards; transformers loaded {type(model).__name__} with the same {len(ref)} tensors")
PYEOF
  ok "export-shards-index-loads"
else
  bad "export-shards-index-loads ($(head -c 600 exp-shards.err))"
fi

if "$BIN" export run-all exp-b16 --dtype bfloat16 > /dev/null 2> exp-b16.err && "$PY" - exp-b16 exp-all <<'PYEOF'; then
import json, sys
import torch
from safetensors.torch import load_file
a, b = load_file(f"{sys.argv[1]}/model.safetensors"), load_file(f"{sys.argv[2]}/model.safetensors")
assert all(t.dtype == torch.bfloat16 for t in a.values())
assert all(torch.equal(a[k], b[k].to(torch.bfloat16)) for k in b)
assert json.load(open(f"{sys.argv[1]}/config.json"))["torch_dtype"] == "bfloat16"
PYEOF
  ok "export-dtype-bfloat16"
else
  bad "export-dtype-bfloat16 ($(head -c 600 exp-b16.err))"
fi

# A run folder whose newest checkpoint is corrupt: the previous one, with a warning naming the file.
cp -r run-all run-dmg
f=run-dmg/step-0000012/rank-00000-of-00001.safetensors
printf '\x5a' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 100 )) conv=notrunc status=none
if "$BIN" export run-dmg exp-dmg > exp-dmg.out 2> exp-dmg.err && grep -q "step-0000009 (step 9)" exp-dmg.out &&
   grep -q "step-0000012/rank-00000-of-00001.safetensors: checksum" exp-dmg.out; then
  ok "export-run-folder-skips-corrupt-newest"
else
  bad "export-run-folder-skips-corrupt-newest ($(head -c 600 exp-dmg.out exp-dmg.err))"
fi

# --- c. errors ---------------------------------------------------------------------------------------------
expect_error export-corrupt-checkpoint "step-0000012/rank-00000-of-00001.safetensors: checksum" -- \
  "$BIN" export run-dmg/step-0000012 bad-out
mkdir -p run-inc/step-0000003
expect_error export-incomplete-checkpoint "step-0000003/manifest.json: missing" -- "$BIN" export run-inc/step-0000003 bad-out
mkdir -p empty
expect_error export-not-a-checkpoint "empty: not a training checkpoint" -- "$BIN" export empty bad-out
expect_error export-model-missing "nope.bin \(--model\) does not exist" -- "$BIN" export run-all bad-out --model "$WORK/nope.bin"
TINY="$ASSETS/models/tiny-random-llama-2"
if [ -d "$TINY" ]; then
  expect_error export-shape-mismatch "param/embed.weight has shape \[512, 64\] but .*model.embed_tokens.weight has \[3000, 16\]" -- \
    "$BIN" export run-all bad-out --model "$TINY"
fi
# The same model re-saved as a Hugging Face folder passes; with an edited config.json the fingerprint fails.
if "$BIN" export run-all exp-via-hf --model exp-all > /dev/null 2> exp-via-hf.err && same_weights exp-via-hf exp-all; then
  ok "export-base-model-moved (--model: the same model as a Hugging Face folder)"
else
  bad "export-base-model-moved ($(head -c 600 exp-via-hf.err))"
fi
cp -r exp-all edited
sed -i 's/"rms_norm_eps": [0-9.e-]*/"rms_norm_eps": 0.001/' edited/config.json
expect_error export-fingerprint-mismatch "model fingerprint 'crc32c:[0-9a-f]{8}' differs from 'crc32c:[0-9a-f]{8}' computed from .*edited" -- \
  "$BIN" export run-all bad-out --model edited
if "$BIN" export run-all exp-ignored --model edited --ignore-fingerprint --json > exp-ignored.json 2> exp-ignored.err &&
   grep -q "fingerprint mismatch ignored" exp-ignored.err && same_weights exp-ignored exp-all &&
   "$PY" -c 'import json; r=json.load(open("exp-ignored.json")); assert not r["fingerprint_checked"], r'; then
  ok "export-ignore-fingerprint"
else
  bad "export-ignore-fingerprint ($(head -c 600 exp-ignored.err))"
fi
expect_error export-bad-shard-size "--shard-size: '5 parsecs' is not a size" -- "$BIN" export run-all bad-out --shard-size "5 parsecs"

# --- b. MLA: transformers runs the DeepSeek-V3 export and computes what mlaforge computes ------------------
"$BIN" convert "$MODEL" mla --rope-dim 8 --kv-lora-rank 16 --calib "$TXT" --calib-skip 400 --calib-docs 16 \
  --mode deployable > convert.log 2>&1 || { tail -20 convert.log; echo "FAIL: conversion failed"; exit 1; }
"$BIN" train r.yaml model.path=mla model.trainable=up_proj train.max_steps=6 optim.lr=3e-3 train.output_dir=run-mla \
  > run-mla.log 2>&1 || { tail -20 run-mla.log; echo "FAIL: MLA training failed"; exit 1; }
if "$BIN" export run-mla exp-mla --json > exp-mla.json 2> exp-mla.err &&
   "$PY" -c 'import json; r=json.load(open("exp-mla.json")); assert r["mla"] and r["family"] == "deepseek_v3" and (r["from_checkpoint"], r["from_model"]) == (5, 57), r' &&
   same_weights exp-mla run-mla/model &&
   "$PY" -c 'import sys; from safetensors.numpy import load_file as l; a=l("exp-mla/model.safetensors"); b=l("mla/model.safetensors"); k="model.layers.0.self_attn.kv_b_proj.weight"; assert abs(a[k]-b[k]).max() > 1e-4, "kv_b did not train"'; then
  ok "export-mla-up-proj (5 trained kv_b_proj + 57 converted tensors, bitwise the run's export)"
else
  bad "export-mla-up-proj ($(head -c 600 exp-mla.err exp-mla.json))"
fi
"$BIN" eval exp-mla --text eval.txt --max-seq-len 128 --json > mla-eval.json 2> mla-eval.err
"$BIN" generate exp-mla --prompt "" --max-new-tokens 40 --json > mla-gen.json 2> mla-gen.err
if "$PY" - exp-mla eval.txt 128 mla-eval.json mla-gen.json <<'PYEOF'; then
import json, sys
import sentencepiece, torch, transformers
folder, text, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
ours, gen = json.load(open(sys.argv[4])), json.load(open(sys.argv[5]))
# Documents as `mlaforge eval` splits them (data/text.cpp split_paragraphs): at blank lines.
docs, cur = [], []
for line in open(text, encoding="utf-8").read().split("\n"):
    if line.strip(" \t\r") == "":
        if cur: docs.append("\n".join(cur)); cur = []
    else:
        cur.append(line.rstrip("\r"))
if cur: docs.append("\n".join(cur))
sp = sentencepiece.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
assert type(model).__name__ == "DeepseekV3ForCausalLM", type(model).__name__
nll, count = 0.0, 0
with torch.no_grad():
    for doc in docs:
        ids = ([1] + sp.encode(doc))[:max_len]
        logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits[:-1], -1)
        nll -= logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
        count += len(ids) - 1
    mean = nll / count
    rel = abs(mean - ours["mean_nll"]) / ours["mean_nll"]
    print(f"  {len(docs)} documents, {count} tokens: transformers mean NLL {mean:.6f}, mlaforge {ours['mean_nll']:.6f}, rel {rel:.1e}")
    assert count == ours["tokens"], (count, ours["tokens"])
    assert rel < 1e-4, rel
    # Greedy from BOS, as `mlaforge generate --prompt ""` (stops at EOS 2).
    ids = [1]
    for _ in range(40):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == 2: break
    assert ids[1:] == gen["tokens"], (ids[1:], gen["tokens"])
    print(f"  greedy: the same {len(gen['tokens'])} tokens")
PYEOF
  ok "export-mla-runs-in-transformers"
else
  bad "export-mla-runs-in-transformers ($(head -c 400 mla-eval.err mla-gen.err))"
fi
expect_error export-other-model "param/layers.0.attn.wkv_b.weight is not a weight of .*stories260K.bin \(llama, GQA\)" -- \
  "$BIN" export run-mla bad-out --model "$MODEL"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
