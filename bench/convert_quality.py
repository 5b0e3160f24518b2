#!/usr/bin/env python3
"""Conversion quality side by side: `mlaforge convert` vs TransMLA's own converter (issue 9).

Both tools get the same model (one fp32 Hugging Face folder, written once), the same calibration token
sequences and the same evaluation token sequences, and are scored with one perplexity protocol:

  each evaluation document on its own, BOS + its tokens truncated to --eval-len, every next token scored,
  the mean NLL over all scored tokens of all documents (token-weighted), ppl = exp(mean).

That is what `mlaforge convert --eval` reports; TransMLA's converted model (still in PyTorch memory) is
scored the same way here, and the original model by both (the bench checks they agree: same tokens, same
protocol). Settings are chosen on calibration data only for ours (`--freqfold auto` searches on a held-out
quarter of the calibration documents); TransMLA runs as its README runs it, `--freqfold auto`, which picks
the fold by perplexity on its *test* loader: we hand it the evaluation documents (its advantage).

TransMLA (github fxmeng/TransMLA at 9c0d254, `transmla/transmla/*.py`) runs in a bench-only venv with
transformers 4.52.4 (bench/convert_quality.sh makes it); nothing of it is in this repository. Its main()
downloads wikitext2, so its own functions `partial_rope` and `low_rank_qkv` are called as main() calls
them, with our loaders. Without a checkout the bench prints our figures and TransMLA's last recorded ones.

  convert_quality.py --mlaforge build/bin/mlaforge --assets ../shared/assets --out OUT [--transmla DIR --transmla-python PY]
  convert_quality.py --worker SPEC.json   (internal: one TransMLA conversion, run under the bench venv)
"""
import argparse
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
CACHE = pathlib.Path(os.environ.get("MLAFORGE_BENCH_CACHE", pathlib.Path.home() / ".cache/mlaforge/bench"))

# Last TransMLA figures this bench recorded (the README table), printed when no checkout is given.
RECORDED = {
    "recorded": "2026-11-24, 2-core EPYC VM, TransMLA 9c0d254 + transformers 4.52.4",
    "rows": {
        "stories260K 4+16": {
                "ppl_original": 4.1844,
                "freqfold": 2,
                "ppl_partial": 57.9908,
                "ppl_after": 67.3901,
                "seconds": 14.4818,
                "rss_gb": 0.8483
        },
        "stories260K 8+16": {
                "ppl_original": 4.1844,
                "freqfold": 1,
                "ppl_partial": 5.8364,
                "ppl_after": 11.2523,
                "seconds": 9.7054,
                "rss_gb": 0.832
        },
        "stories260K 8+24": {
                "ppl_original": 4.1844,
                "freqfold": 1,
                "ppl_partial": 5.8364,
                "ppl_after": 7.9954,
                "seconds": 9.8702,
                "rss_gb": 0.8328
        },
        "SmolLM2-135M 64+128": {
                "ppl_original": 20.4658,
                "freqfold": 2,
                "ppl_partial": 21.8577,
                "ppl_after": 25.8799,
                "seconds": 444.9074,
                "rss_gb": 2.9221
        },
        "SmolLM2-135M 64+64": {
                "ppl_original": 20.4658,
                "freqfold": 2,
                "ppl_partial": 21.8577,
                "ppl_after": 41.2872,
                "seconds": 59.9094,
                "rss_gb": 2.9528
        }
    },
}

# Models and budgets (r, R) of the issue, calibration and evaluation slices of the TinyStories text.
MODELS = {
    "SmolLM2-135M": dict(budgets=[(64, 128), (64, 64)], calib_skip=200, calib_docs=64, calib_len=256,
                         eval_docs=40, eval_len=256),
    "stories260K": dict(budgets=[(4, 16), (8, 16), (8, 24)], calib_skip=200, calib_docs=128, calib_len=256,
                        eval_docs=100, eval_len=512),
}

# Our ablation ladder: each row adds one technique to the one before, up to the default, then two variants
# of the default. Every row reuses
# the fold the main run's `--freqfold auto` chose, so their times compare like with like (the main run's
# time includes the fold search).
ABLATIONS = [
    ("TransMLA's method in mlaforge (key-energy RoPE, balanced BKV-PCA, no refit)",
     ["--rope-select", "key", "--pca-metric", "balanced", "--no-refit"]),
    ("+ attention-aware PCA metric", ["--rope-select", "key", "--no-refit"]),
    ("+ query-aware RoPE selection", ["--no-refit"]),
    ("+ W_UV refit", ["--no-refit-output"]),
    ("+ o_proj refit (default)", []),
    ("default, o_proj refit to the original residual stream (--refit-drift)", ["--refit-drift"]),
    ("default, one-pass calibration (not sequential)", ["--one-pass"]),
]


def split_paragraphs(text):
    """data/text.cpp split_paragraphs: documents at blank (whitespace-only) lines, lines joined by \\n."""
    docs, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "":
            if cur:
                docs.append("\n".join(cur))
            cur = []
            continue
        cur.append(line[:-1] if line.endswith("\r") else line)
    if cur:
        docs.append("\n".join(cur))
    return docs


def model_folder(name, assets):
    """The fp32 Hugging Face folder both tools read, written once into the cache."""
    folder = CACHE / f"{name}-hf"
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if name == "SmolLM2-135M":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        gguf = pathlib.Path(os.environ.get("MLAFORGE_DEFAULT_MODEL",
                                           pathlib.Path.home() / ".cache/mlaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype="float32")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
    else:
        import numpy as np
        from safetensors.numpy import save_file
        sys.path.insert(0, str(HERE.parent / "tests" / "python"))
        from refs_gguf import llama2c_to_hf
        weights = llama2c_to_hf(str(pathlib.Path(assets) / "models/stories260K/stories260K.bin"))
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(folder / "model.safetensors"))
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                  "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "head_dim": 8, "vocab_size": 512, "max_position_embeddings": 512,
                  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "bos_token_id": 1,
                  "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "float32"}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def tokenize(name, folder, assets, docs, length):
    """BOS + tokens of each document, truncated to `length` (trainer/evaluate.cpp tokenize_documents)."""
    if name == "stories260K":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(pathlib.Path(assets) / "models/stories260K/tok512.model"))
        return [([1] + sp.encode(d))[:length] for d in docs]
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = json.loads((folder / "config.json").read_text())["bos_token_id"]
    return [([bos] + tok.encode(d, add_special_tokens=False).ids)[:length] for d in docs]


def run_ours(args, name, folder, spec, r, R, extra, mode="exact", fold="auto"):
    out = CACHE / "out" / f"ours-{name}"
    cmd = [args.mlaforge, "--threads", str(args.threads), "convert", str(folder), str(out), "--rope-dim", str(r),
           "--kv-lora-rank", str(R), "--freqfold", str(fold), "--mode", mode, "--calib", args.text,
           "--calib-skip", str(spec["calib_skip"]), "--calib-docs", str(spec["calib_docs"]),
           "--calib-len", str(spec["calib_len"]), "--eval", args.text, "--eval-docs", str(spec["eval_docs"]),
           "--eval-len", str(spec["eval_len"]), "--json", *extra]
    if name == "stories260K":
        cmd += ["--tokenizer", str(pathlib.Path(args.assets) / "models/stories260K/tok512.model")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"mlaforge convert failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    j = json.loads(res.stdout)
    subprocess.run(["rm", "-rf", str(out)])
    return dict(ppl_before=j["eval"]["ppl_before"], ppl_after=j["eval"]["ppl_after"], seconds=j["seconds"],
                rss_gb=j["peak_rss_bytes"] / 2**30, freqfold=j["freqfold"])


# ---------------------------------------------------------------------------------------------------------
# The TransMLA worker (runs under the bench venv: transformers 4.52.4)


def nll_protocol(model, docs):
    import torch
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in docs:
            if len(ids) < 2:
                continue
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0, :-1].double(), -1)
            total -= logp.gather(-1, x[0, 1:].unsqueeze(-1)).sum().item()
            count += len(ids) - 1
    return math.exp(total / count)


def worker(spec_path):
    import torch
    spec = json.loads(pathlib.Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(pathlib.Path(spec["transmla"]) / "transmla" / "transmla"))
    from transformers import AutoModelForCausalLM
    from partial_rope import partial_rope
    from lora_qkv import low_rank_qkv

    class Tok:  # what TransMLA's functions read of a tokenizer: the pad id (ignore_index of its own ppl)
        pad_token_id = -100

    def batches(docs, size, pad):
        out = []
        for i in range(0, len(docs), size):
            chunk = docs[i:i + size]
            T = max(len(d) for d in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for b, d in enumerate(chunk):
                ids[b, :len(d)] = torch.tensor(d)
                mask[b, :len(d)] = 1
            out.append({"input_ids": ids, "attention_mask": mask})
        return out

    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], torch_dtype=torch.float32,
                                                 _attn_implementation="sdpa")
    model.eval()
    calib = batches(spec["calib"], 8, 0)
    test = batches(spec["eval"], 1, 0)  # one document per batch: no padding in its own ppl
    result = {"ppl_original": nll_protocol(model, spec["eval"])}
    head_dim = model.config.head_dim
    collapse = head_dim // spec["r"]
    model.config.head_dim = head_dim
    model, fold = partial_rope(model, Tok(), calib, test, freqfold="auto", collapse=collapse)
    result["freqfold"] = fold
    result["ppl_partial"] = nll_protocol(model, spec["eval"])
    model = low_rank_qkv(model, Tok(), calib, None, q_lora_rank=None, qk_mqa_dim=spec["r"], collapse=collapse,
                         kv_lora_rank=spec["R"], use_qkv_norm=False, balance_kv_ratio=1)
    result["ppl_after"] = nll_protocol(model, spec["eval"])
    result["seconds"] = time.time() - start
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def run_transmla(args, name, folder, r, R, calib, evaluation):
    spec = dict(transmla=args.transmla, folder=str(folder), r=r, R=R, calib=calib, eval=evaluation,
                threads=args.threads)
    path = CACHE / "out" / f"transmla-{name}-{r}-{R}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    res = subprocess.run([args.transmla_python, __file__, "--worker", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"TransMLA worker failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--mlaforge", default="build/bin/mlaforge")
    ap.add_argument("--assets", default=str(HERE.parent.parent / "shared" / "assets"))
    ap.add_argument("--transmla", default=os.environ.get("TRANSMLA_DIR"))
    ap.add_argument("--transmla-python", default=sys.executable)
    ap.add_argument("--out", default=str(CACHE / "results"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ablations", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    args.text = str(pathlib.Path(args.assets) / "text" / "tinystories_val_part1.txt")
    paragraphs = split_paragraphs(pathlib.Path(args.text).read_text(encoding="utf-8"))
    results = []
    for name in args.models.split(","):
        spec = MODELS[name]
        folder = model_folder(name, args.assets)
        s = spec["calib_skip"]
        calib = tokenize(name, folder, args.assets, paragraphs[s:s + spec["calib_docs"]], spec["calib_len"])
        evaluation = tokenize(name, folder, args.assets, paragraphs[:spec["eval_docs"]], spec["eval_len"])
        assert not set(range(s, s + spec["calib_docs"])) & set(range(spec["eval_docs"])), "calibration overlaps eval"
        cfg = json.loads((folder / "config.json").read_text())
        d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        L = cfg["num_key_value_heads"] * d
        for r, R in spec["budgets"]:
            row = dict(model=name, r=r, R=R, kv_before=2 * L, kv_after=r + R)
            print(f"[{name} r={r} R={R}] ours ...", file=sys.stderr, flush=True)
            row["ours"] = run_ours(args, name, folder, spec, r, R, [])
            fold = row["ours"]["freqfold"]
            row["ours_partial"] = run_ours(args, name, folder, spec, r, 2 * L - r, [], fold=fold)
            row["ours_portable"] = run_ours(args, name, folder, spec, r, R, [], mode="portable", fold=fold)
            if not args.no_ablations:
                row["ablations"] = [(label, run_ours(args, name, folder, spec, r, R, extra, fold=fold))
                                    for label, extra in ABLATIONS]
            if args.transmla:
                print(f"[{name} r={r} R={R}] TransMLA ...", file=sys.stderr, flush=True)
                row["transmla"] = run_transmla(args, name, folder, r, R, calib, evaluation)
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert_quality.json").write_text(json.dumps(results, indent=2))
    print_tables(results, args)


def print_tables(results, args):
    print("| model | KV values/token/layer | original | TransMLA partial RoPE | TransMLA compressed | ours partial RoPE "
          "| ours compressed | ours portable | gap ratio | time TransMLA / ours | peak RSS TransMLA / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        o = row["ours"]
        t = row.get("transmla") or RECORDED["rows"].get(f"{row['model']} {row['r']}+{row['R']}")
        orig = o["ppl_before"]
        if t:
            check = abs(t["ppl_original"] - orig) / orig
            assert check < 2e-3, f"protocols disagree on the original model: {t['ppl_original']} vs {orig}"
            gap = (o["ppl_after"] - orig) / (t["ppl_after"] - orig)
            tcols = (f"{t['ppl_partial']:.2f} (fold {t['freqfold']})", f"{t['ppl_after']:.2f}", f"{gap:.2f}",
                     f"{t['seconds']:.0f} s / {o['seconds']:.0f} s", f"{t['rss_gb']:.2f} / {o['rss_gb']:.2f} GiB")
        else:
            tcols = ("-", "-", "-", f"- / {o['seconds']:.0f} s", f"- / {o['rss_gb']:.2f} GiB")
        print(f"| {row['model']} | {row['kv_before']} -> {row['kv_after']} (r {row['r']} + R {row['R']}) | {orig:.3f} "
              f"| {tcols[0]} | {tcols[1]} | {row['ours_partial']['ppl_after']:.2f} (fold {o['freqfold']}) "
              f"| **{o['ppl_after']:.2f}** | {row['ours_portable']['ppl_after']:.2f} | **{tcols[2]}** | {tcols[3]} "
              f"| {tcols[4]} |")
    if any("ablations" in row for row in results):
        print("\nOurs, one technique at a time (perplexity after compression; time, peak RSS):\n")
        heads = [f"{row['model']} {row['r']}+{row['R']}" for row in results if "ablations" in row]
        print("| | " + " | ".join(heads) + " |")
        print("| --- |" + " --- |" * len(heads))
        labels = [label for label, _ in ABLATIONS]
        for k, label in enumerate(labels):
            cells = []
            for row in results:
                if "ablations" in row:
                    a = row["ablations"][k][1]
                    cells.append(f"{a['ppl_after']:.2f} ({a['seconds']:.0f} s, {a['rss_gb']:.2f} GiB)")
            print(f"| {label} | " + " | ".join(cells) + " |")
    if not args.transmla:
        print(f"\n(no TRANSMLA_DIR: TransMLA columns from the recording of {RECORDED['recorded']})")


if __name__ == "__main__":
    main()
