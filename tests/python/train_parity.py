"""End-to-end parity of `mlaforge train` with an equivalent PyTorch loop (tests/cli/train_parity.sh).

Two commands:

  train_parity.py make-fixture OUT --assets DIR
      Writes OUT/llama and OUT/mla (tiny random LlamaForCausalLM / DeepseekV3ForCausalLM folders, float32
      safetensors, vocabulary 512 with the stories260K SentencePiece model as tokenizer.model) and
      OUT/train.txt (the first 120 TinyStories paragraphs cut into documents of 1, 2, 3 sentences in turn,
      blank-line separated). Weights are unit-scale random (see _reinit).

  train_parity.py check RUN_DIR MODEL_DIR [--loss-rtol R] [--grad-rtol R] [--require-clipping]
                       [--require-packed-rows]
      Replays a finished `mlaforge train` run in PyTorch and compares it with RUN_DIR/metrics.jsonl:
        data   the run's token cache (RUN_DIR/recipe.yaml -> data.cache_dir/<key>/, data/token_cache.h) is
               read with numpy, and the loader is re-implemented from its header alone
               (data/data_loader.h: splitmix64 Fisher-Yates order per epoch, the longest prefix that
               first-fit-decreasing packs into micro x accum rows found by binary search, empty rows;
               data/packing.h: row layout). The number of real and trained tokens it produces is checked
               against report.json before any model runs, so a data-order bug is reported as such.
        model  transformers' model from MODEL_DIR in float32, eager attention, torch.set_num_threads(1).
               Packed rows get a 4D additive mask (batch, 1, T, T): causal and block-diagonal by segment
               id, with position_ids restarting per document (transformers uses a 4D mask as given).
        step   zero_grad; per micro-batch CE summed over targets != -100 divided by the whole step's
               trained tokens, backward; clip_grad_norm_(foreach=False); AdamW(foreach=False) with the
               trainer's two groups (no decay: norms, biases, model.embed_tokens.weight); LambdaLR with
               trainer/lr_schedule.h's formula.
      It exits 1 with the worst differences when a step's loss, gradient norm or learning rate differs by
      more than the tolerance (relative), 0 otherwise, and prints the per-step table either way.
      --require-clipping fails unless some steps but not all are clipped; --require-packed-rows fails
      unless some row holds several documents (so that the per-document mask is exercised).

Default tolerances: 1e-6 relative on losses and gradient norms, the learning rate 1e-12. Measured on the
fixture (tests/cli/train_parity.sh, 2 models x 5 seeds, 1 and 2 threads, packing on/off, epoch ends):
at most 1.3e-7 on losses, 1.2e-7 on gradient norms (one or two float32 ulps), lr exactly equal. For
scale: a plain causal mask instead of the per-document one gives 3e-3 on the loss, first-fit without
the decreasing order changes the batches (caught by the token counts).
"""
import argparse
import glob
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100
MASK64 = (1 << 64) - 1

# ----------------------------------------------------------------------------------------------------
# Fixture
# ----------------------------------------------------------------------------------------------------

VOCAB = 512
PARAGRAPHS = 120


def _reinit(model, seed):
    """Unit-scale random weights (O(1) activations and logits): the loss curve moves within 6 steps and
    depends visibly on what each token attends to, unlike transformers' 0.02-std init (near-uniform logits)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def _save(model, folder, tokenizer_model):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(tokenizer_model, os.path.join(folder, "tokenizer.model"))


def make_fixture(out, assets):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = os.path.join(assets, "models", "stories260K", "tok512.model")
    text = os.path.join(assets, "text", "tinystories_val_part1.txt")
    os.makedirs(out, exist_ok=True)
    with open(text, encoding="utf-8") as f:
        paragraphs = [p.strip() for p in f.read().split("\n\n") if p.strip()]
    assert len(paragraphs) >= PARAGRAPHS, f"{text}: only {len(paragraphs)} paragraphs"
    # Paragraphs alone are mostly longer than the 64-token rows (split into full windows, one per row);
    # documents of 1, 2, 3 sentences in turn make rows of several documents of varied lengths, so that
    # first-fit-decreasing, segments and restarting positions matter.
    docs, k = [], 0
    for p in paragraphs[:PARAGRAPHS]:
        sentences = re.split(r"(?<=[.!?])\s+", p)
        i = 0
        while i < len(sentences):
            n = 1 + k % 3
            docs.append(" ".join(sentences[i:i + n]))
            i, k = i + n, k + 1
    with open(os.path.join(out, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    llama = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, rope_theta=10000.0, **common))
    _reinit(llama, 5100)
    llama.config.dtype = torch.float32
    _save(llama, os.path.join(out, "llama"), tok)

    # Every layer dense (n_routed_experts 0, first_k_dense_replace = layers), no query LoRA.
    mla = DeepseekV3ForCausalLM(DeepseekV3Config(
        num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=16, n_routed_experts=0, first_k_dense_replace=2, num_mtp_layers=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common))
    for layer in mla.model.layers:
        assert type(layer.mlp).__name__ == "DeepseekV3MLP", type(layer.mlp).__name__
    _reinit(mla, 5200)
    mla.config.dtype = torch.float32
    _save(mla, os.path.join(out, "mla"), tok)


# ----------------------------------------------------------------------------------------------------
# The token cache (data/token_cache.h)
# ----------------------------------------------------------------------------------------------------


class Cache:
    def __init__(self, folder):
        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        self.tokens = np.fromfile(os.path.join(folder, "tokens.bin"), dtype="<i4")
        self.mask = np.fromfile(os.path.join(folder, "mask.bin"), dtype=np.uint8)
        self.index = np.fromfile(os.path.join(folder, "index.bin"), dtype="<i8")
        self.n = len(self.index) - 1
        assert len(self.tokens) == len(self.mask) == self.index[-1], f"{folder}: .bin sizes disagree"
        starts = self.index[:-1]
        trained = int(self.mask.sum()) - int(self.mask[starts].sum())  # loss terms: mask[1:] of each sample
        for key, want in (("num_samples", self.n), ("num_tokens", len(self.tokens)), ("trained_tokens", trained)):
            assert self.meta.get(key) == want, f"{folder}/meta.json: {key} {self.meta.get(key)} != {want} in the .bin files"
        self.pad_id = int(self.meta["pad_id"])

    def length(self, i):
        return int(self.index[i + 1] - self.index[i])

    def sample(self, i):
        a, b = int(self.index[i]), int(self.index[i + 1])
        return self.tokens[a:b].astype(np.int64), self.mask[a:b]


def find_cache(run, recipe):
    root = recipe["data"]["cache_dir"] or os.path.join(run, "data_cache")
    folders = [d for d in sorted(glob.glob(os.path.join(root, "*"))) if os.path.isdir(d) and ".tmp-" not in d
               and os.path.exists(os.path.join(d, "meta.json"))]
    if len(folders) == 1:
        return folders[0]
    # Several caches (train and eval, or older runs): the one whose inputs name the training files.
    train = recipe["data"]["train"]
    train = [train] if isinstance(train, str) else train
    hits = [d for d in folders if all(os.path.abspath(t) in open(os.path.join(d, "meta.json")).read() for t in train)]
    if len(hits) != 1:
        sys.exit(f"train_parity: cannot tell the training cache among {folders} under {root}")
    return hits[0]


# ----------------------------------------------------------------------------------------------------
# The loader (data/data_loader.h, data/packing.h), from the headers
# ----------------------------------------------------------------------------------------------------


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    def __init__(self, state):
        self.state = state & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        return mix64(self.state)

    def below(self, n):
        """Lemire's unbiased integer in [0, n)."""
        threshold = ((1 << 64) - n) % n
        m = self.next() * n
        while (m & MASK64) < threshold:
            m = self.next() * n
        return m >> 64


def shuffled_order(n, seed, epoch):
    rng = SplitMix64(mix64(mix64(seed & MASK64) ^ epoch))
    p = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def plan_packing(lengths, seq_len):
    """First-fit decreasing: longest first (ties by index), each into the first row with room."""
    rows, fill = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        assert 1 <= lengths[i] <= seq_len, f"sample of {lengths[i]} tokens for rows of {seq_len}"
        for r in range(len(rows)):
            if fill[r] + lengths[i] <= seq_len:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


def shifted_targets(ids, mask):
    t = np.full(len(ids), IGNORE, dtype=np.int64)
    t[:-1] = np.where(mask[1:] == 1, ids[1:], IGNORE)
    return t


class Row:
    """One row of a micro-batch: ids, targets, positions, segments (all length `width`)."""

    def __init__(self, docs, width, pad_id):
        self.ids = np.full(width, pad_id, dtype=np.int64)
        self.targets = np.full(width, IGNORE, dtype=np.int64)
        self.positions = np.zeros(width, dtype=np.int64)
        self.segments = np.zeros(width, dtype=np.int64)
        col = 0
        for s, (ids, mask) in enumerate(docs):
            n = len(ids)
            self.ids[col:col + n] = ids
            self.targets[col:col + n] = shifted_targets(ids, mask)
            self.positions[col:col + n] = np.arange(n)
            self.segments[col:col + n] = s + 1
            col += n
        assert col <= width
        self.positions[col:] = np.arange(width - col)  # padding restarts at 0 too
        self.real = col


class Loader:
    def __init__(self, cache, micro_batch, grad_accum, packing, seq_len, shuffle, seed, pad_to_multiple_of=8):
        self.cache, self.mb, self.accum = cache, micro_batch, grad_accum
        self.packing, self.seq_len, self.shuffle, self.seed = packing, seq_len, shuffle, seed
        self.pad_multiple = pad_to_multiple_of
        self.G = micro_batch * grad_accum  # dp_size 1
        self.epoch, self.pos, self.order = 0, 0, None

    def _order(self):
        if self.order is None:
            n = self.cache.n
            self.order = shuffled_order(n, self.seed, self.epoch) if self.shuffle else list(range(n))
        return self.order

    def _take(self, order):
        """How many samples of order[pos:] the step consumes, and the rows (lists of cache indices)."""
        rest = order[self.pos:]
        if not self.packing:
            k = min(self.G, len(rest))
            return k, [[i] for i in rest[:k]]
        lengths = [self.cache.length(i) for i in rest]
        budget, total, kmax = self.G * self.seq_len, 0, 0
        for n in lengths:
            if total + n > budget:
                break
            total += n
            kmax += 1
        # Largest prefix that packs into <= G rows, by binary search (lo always fits: one sample, one row).
        lo, hi = 1, kmax
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(plan_packing(lengths[:mid], self.seq_len)) <= self.G:
                lo = mid
            else:
                hi = mid - 1
        plan = plan_packing(lengths[:lo], self.seq_len)
        return lo, [[rest[j] for j in row] for row in plan]

    def next_step(self):
        """Micro-batches of one step: lists of Row, plus the step's real and trained token counts."""
        order = self._order()
        k, rows = self._take(order)
        self.pos += k
        if self.pos == len(order):
            self.epoch, self.pos, self.order = self.epoch + 1, 0, None
        docs = [[self.cache.sample(i) for i in row] for row in rows]
        micro = []
        for j in range(self.accum):
            part = docs[j * self.mb:(j + 1) * self.mb]
            if self.packing:
                width = self.seq_len
            else:
                longest = max([len(d[0][0]) for d in part], default=1)
                width = -(-longest // self.pad_multiple) * self.pad_multiple
            part = part + [[]] * (self.mb - len(part))  # empty rows
            micro.append([Row(d, width, self.cache.pad_id) for d in part])
        real = sum(r.real for m in micro for r in m)
        trained = sum(int((r.targets != IGNORE).sum()) for m in micro for r in m)
        return micro, real, trained


# ----------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------


# The schedule (trainer/lr_schedule.h) and the no-decay rule (trainer/optimizer.h), transcribed once for
# the optimizer references.
from refs_optim import lr_factor, no_decay  # noqa: E402


def is_trainable(preset, hf_name):
    if preset == "all":
        return True
    if preset == "up_proj":
        return hf_name.endswith("self_attn.kv_b_proj.weight") or hf_name.endswith("self_attn.q_b_proj.weight")
    if preset == "attention":
        return ".self_attn." in hf_name
    sys.exit(f"train_parity: model.trainable '{preset}' is not supported by this check (all, up_proj, attention)")


def block_causal_mask(segments):
    """(B, T) segment ids -> (B, 1, T, T) float32 additive mask: 0 where key j <= query i in the same segment."""
    t = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[:, None]


def tensors(rows):
    st = lambda name: torch.from_numpy(np.stack([getattr(r, name) for r in rows]))
    return st("ids"), st("targets"), st("positions"), st("segments")


def check(run, model_dir, loss_rtol, grad_rtol, require_clipping, require_packed_rows=False):
    import yaml
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    with open(os.path.join(run, "recipe.yaml")) as f:
        recipe = yaml.safe_load(f)
    d, tr, opt, sch, bt = recipe["data"], recipe["train"], recipe["optim"], recipe["schedule"], recipe["batch"]
    unsupported = []
    if recipe["model"]["dtype"] != "fp32":
        unsupported.append(f"model.dtype {recipe['model']['dtype']} (fp32 only)")
    if (recipe.get("teacher") or {}).get("path"):
        unsupported.append("teacher.path (no distillation)")
    if opt.get("no_decay"):
        unsupported.append("optim.no_decay patterns")
    if tr["max_steps"] is None:
        unsupported.append("train.epochs (set train.max_steps)")
    if unsupported:
        sys.exit("train_parity: the run uses what this check does not replay: " + ", ".join(unsupported))
    trainable = recipe["model"]["trainable"]
    trainable = trainable if isinstance(trainable, list) else [s.strip() for s in trainable.split(",")]
    if len(trainable) != 1:
        sys.exit(f"train_parity: model.trainable {trainable}: one preset only")

    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    ours = {r["step"]: r for r in records if r.get("split") == "train"}
    total = int(tr["max_steps"])
    if sorted(ours) != list(range(1, total + 1)):
        sys.exit(f"train_parity: {run}/metrics.jsonl has train steps {sorted(ours)}, expected 1..{total}")
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)

    # --- data: the same micro-batches, checked against the run's token counts first ---------------------
    cache_dir = find_cache(run, recipe)
    cache = Cache(cache_dir)
    seed = d["seed"] if d["seed"] is not None else tr["seed"]
    loader = Loader(cache, int(bt["micro_batch_size"]), int(bt["grad_accumulation"]), bool(d["packing"]),
                    int(d["max_seq_len"]), bool(d["shuffle"]), int(seed))
    steps = [loader.next_step() for _ in range(total)]
    real = sum(s[1] for s in steps)
    trained = sum(s[2] for s in steps)
    all_rows = [r for micro, _, _ in steps for mb in micro for r in mb]
    packed_rows = sum(int(r.segments.max()) > 1 for r in all_rows)
    print(f"data: {cache.n} samples in {cache_dir}; {total} steps of {loader.G} rows x {loader.seq_len if loader.packing else 'padded'}:"
          f" {real} tokens, {trained} trained (the run: {report.get('tokens')}, {report.get('trained_tokens')}); "
          f"{packed_rows} of {len(all_rows)} rows hold several documents")
    if require_packed_rows and packed_rows == 0:
        sys.exit("train_parity: FAIL: no row holds several documents: the per-document mask is not exercised")
    if (real, trained) != (report.get("tokens"), report.get("trained_tokens")):
        sys.exit("train_parity: FAIL: the replayed batches hold other tokens than the run trained on "
                 "(sample order or packing differs from data/data_loader.h as documented)")

    # --- model, optimizer, schedule ---------------------------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.train()
    named = list(model.named_parameters())
    for n, p in named:
        p.requires_grad_(is_trainable(trainable[0], n))
    params = [(n, p) for n, p in named if p.requires_grad]
    groups = [{"params": [p for n, p in params if not no_decay(n)], "weight_decay": float(opt["weight_decay"])},
              {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=float(opt["lr"]), betas=tuple(float(b) for b in opt["betas"]),
                                  eps=float(opt["eps"]), foreach=False)
    warmup = float(sch["warmup"])
    warmup = int(math.floor(warmup * total + 0.5)) if warmup < 1 else min(int(warmup), total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, float(sch["min_lr_ratio"]), sch["decay"]))
    clip = float(opt["grad_clip"])
    vocab = model.config.vocab_size
    print(f"model: {type(model).__name__} from {model_dir}; trainable {trainable[0]}: "
          f"{sum(p.numel() for _, p in params)} parameters in {len(params)} tensors")

    # --- the loop -----------------------------------------------------------------------------------------
    rows, worst, clipped = [], {"loss": (0.0, 0), "grad_norm": (0.0, 0), "lr": (0.0, 0)}, 0
    for k, (micro, _, step_tokens) in enumerate(steps):
        optimizer.zero_grad(set_to_none=True)
        ce_sum = 0.0
        for mb in micro:
            ids, targets, positions, segments = tensors(mb)
            if int((targets != IGNORE).sum()) == 0:
                continue  # empty rows only: nothing to learn, as the trainer skips it
            logits = model(input_ids=ids, attention_mask=block_causal_mask(segments), position_ids=positions,
                           use_cache=False).logits
            loss_sum = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
            (loss_sum / float(step_tokens)).backward()
            ce_sum += loss_sum.item()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], clip if clip > 0 else float("inf"),
                                              foreach=False).item()
        clipped += int(clip > 0 and norm > clip)
        lr = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        torch_vals = {"loss": ce_sum / step_tokens, "grad_norm": norm, "lr": lr}
        rec = ours[k + 1]
        rel = {}
        for key, ref in torch_vals.items():
            rel[key] = abs(rec[key] - ref) / max(abs(ref), 1e-30)
            if rel[key] > worst[key][0]:
                worst[key] = (rel[key], k + 1)
        rows.append((k + 1, rec, torch_vals, rel, clip > 0 and norm > clip))

    print(f"{'step':>4} {'loss (ours)':>15} {'loss (torch)':>15} {'rel':>9}  {'grad_norm (ours)':>16} "
          f"{'grad_norm (torch)':>17} {'rel':>9}  {'lr':>10}  clipped")
    for step, rec, ref, rel, was_clipped in rows:
        print(f"{step:>4} {rec['loss']:>15.9f} {ref['loss']:>15.9f} {rel['loss']:>9.2e}  {rec['grad_norm']:>16.9f} "
              f"{ref['grad_norm']:>17.9f} {rel['grad_norm']:>9.2e}  {ref['lr']:>10.3e}  {'yes' if was_clipped else 'no'}")
    print(f"worst relative differences: loss {worst['loss'][0]:.3e} (step {worst['loss'][1]}), "
          f"grad_norm {worst['grad_norm'][0]:.3e} (step {worst['grad_norm'][1]}), lr {worst['lr'][0]:.3e}; "
          f"tolerances: loss {loss_rtol:g}, grad_norm {grad_rtol:g}, lr 1e-12; {clipped} of {total} steps clipped")
    failures = []
    if worst["loss"][0] > loss_rtol:
        failures.append(f"loss differs by {worst['loss'][0]:.3e} relative at step {worst['loss'][1]} (> {loss_rtol:g})")
    if worst["grad_norm"][0] > grad_rtol:
        failures.append(f"grad_norm differs by {worst['grad_norm'][0]:.3e} relative at step "
                        f"{worst['grad_norm'][1]} (> {grad_rtol:g})")
    if worst["lr"][0] > 1e-12:
        failures.append(f"lr differs by {worst['lr'][0]:.3e} relative at step {worst['lr'][1]}")
    if require_clipping and not 0 < clipped < total:
        failures.append(f"{clipped} of {total} steps clipped: the check must see clipping on some steps only "
                        f"(adjust optim.grad_clip)")
    if failures:
        print("train_parity: FAIL: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("train_parity: ok")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-fixture")
    mk.add_argument("out")
    mk.add_argument("--assets", required=True)
    ck = sub.add_parser("check")
    ck.add_argument("run")
    ck.add_argument("model")
    ck.add_argument("--loss-rtol", type=float, default=1e-6)
    ck.add_argument("--grad-rtol", type=float, default=1e-6)
    ck.add_argument("--require-clipping", action="store_true")
    ck.add_argument("--require-packed-rows", action="store_true")
    a = ap.parse_args()
    if a.cmd == "make-fixture":
        make_fixture(a.out, a.assets)
        return 0
    return check(a.run, a.model, a.loss_rtol, a.grad_rtol, a.require_clipping, a.require_packed_rows)


if __name__ == "__main__":
    sys.exit(main())
