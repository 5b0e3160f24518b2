#!/usr/bin/env python3
"""Training throughput: `mlaforge train` against the equivalent PyTorch loop, same machine, same threads.

    python bench/train_bench.py [--quick] [--model DIR] [--bin build/bin/mlaforge] [--threads 1]
                                [--steps 6] [--warmup 2] [--repeat 1] [--configs all,up_proj]
                                [--pytorch-tcmalloc] [--scratch DIR] [--json OUT]

For each configuration (what trains: `all`, `up_proj` = only the MLA up-projections kv_b_proj/q_b_proj)
both sides run warmup + steps optimizer steps of 2 x 256 tokens, fp32, AdamW, gradient clipping at 1.0,
one after the other (never at the same time), each in its own process:

  ours     `mlaforge --threads T train RECIPE.yaml` on a recipe this script writes (format text, packing on,
           max_seq_len 256, micro_batch_size 2, no evaluation, no export, no progress bar). Its tokens/s is
           the steady state from metrics.jsonl: the harmonic mean of the per-step tokens_per_s of the steps
           after the warm-up ones (every step holds the same 512 tokens, checked against report.json), not
           report.json's average, which includes the warm-up steps.
  PyTorch  a subprocess of this script (so that its peak RSS is its own): transformers'
           AutoModelForCausalLM (DeepseekV3ForCausalLM for a converted folder) in fp32, SDPA attention,
           torch.set_num_threads(T), labels = inputs (HF's shifted mean CE), backward,
           clip_grad_norm_(1.0), torch.optim.AdamW(foreach=False) on the same trainable set, zero_grad.

Data. The TinyStories paragraphs are joined into ONE document (a scratch copy of the file with single
newlines) so that `mlaforge train` cuts it into full 256-token windows and every packed row is full (512
real tokens per step). The PyTorch side cuts the same text, tokenised with the folder's own tokenizer,
into contiguous 256-token windows with a plain causal mask. The tokens are the same text, not the same
batches (ours shuffles its windows): per step the shapes and the FLOPs are the same, which is all a speed
comparison needs. `--docs paragraphs` keeps one document per paragraph instead (mlaforge then packs short
stories with per-document attention, and its rows are not full: its real tokens/s is lower for the same
work; the script prints the fill).

Noise: on a shared machine a burst of someone else's load during one side's run moves the ratio by 10-40%.
--repeat R alternates the sides R times (ours, PyTorch, ours, ...) and reports each side's best run (the
one least disturbed, as the tokenizer benchmark's best-of); every run's figure is printed too.

Allocator: the mlaforge binary links tcmalloc_minimal (bench/malloc_bench.sh); Python uses glibc malloc
unless --pytorch-tcmalloc preloads the same tcmalloc into the PyTorch side (the allocator-neutral ratio).

Peak RSS: os.wait4's ru_maxrss of each child process (the whole process: interpreter, libraries, model,
gradients, AdamW moments, activations). Memory per parameter = peak RSS bytes / the model's parameters
(each side counts its own; a tied embedding counts once).

Model: --model DIR, else a DeepSeek-V3-format MLA folder converted by `mlaforge convert --mode deployable`
into --scratch (never into the repository) the first time: SmolLM2-135M (the default model, rope dim 64,
KV LoRA rank 128) or, with --quick, stories260K (rope dim 8, rank 16). `deployable` is the mode stock
transformers runs (kv_a_layernorm applied), so both sides train the same architecture.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEQ_LEN = 256
MICRO_BATCH = 2


# ----------------------------------------------------------------------------------------------------------
# The PyTorch side (runs in a subprocess: `train_bench.py --worker JSON`)
# ----------------------------------------------------------------------------------------------------------
def load_token_ids(folder, text_path, needed, vocab_size):
    """The text tokenised with the folder's tokenizer (tokenizer.json or tokenizer.model); random ids when
    neither loads (the speed does not depend on which ids they are). Returns (ids, how)."""
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    ids = None
    tj, tm = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "tokenizer.model")
    try:
        if os.path.exists(tj):
            from tokenizers import Tokenizer
            ids, how = Tokenizer.from_file(tj).encode(text, add_special_tokens=False).ids, "tokenizer.json"
        elif os.path.exists(tm):
            import sentencepiece as spm
            ids, how = spm.SentencePieceProcessor(model_file=tm).encode(text), "tokenizer.model"
    except Exception as e:  # noqa: BLE001  (a benchmark: say why and go on with random ids)
        print(f"[pytorch] tokenizer failed ({e}); using random token ids", file=sys.stderr)
        ids = None
    if not ids:
        import torch
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab_size, (needed,), generator=g).tolist(), "random ids"
    while len(ids) < needed:  # cycle a short text
        ids = ids + ids
    return ids, how


def torch_worker(cfg):
    import torch
    import transformers

    t_start = time.perf_counter()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    baseline_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + torch + transformers
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        cfg["model"], dtype=torch.float32, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", [])]
    model.train()
    n_total = sum(p.numel() for p in model.parameters())
    if cfg["trainable"] == "all":
        trainable = list(model.parameters())
    elif cfg["trainable"] == "up_proj":
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = []
        for name, p in model.named_parameters():
            if name.endswith("kv_b_proj.weight") or name.endswith("q_b_proj.weight"):
                p.requires_grad_(True)
                trainable.append(p)
        if not trainable:
            raise SystemExit("up_proj: the model has no kv_b_proj/q_b_proj (not an MLA model)")
    else:
        raise SystemExit(f"unknown trainable set {cfg['trainable']}")
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                            foreach=False)

    steps = cfg["warmup"] + cfg["steps"]
    per_step = MICRO_BATCH * SEQ_LEN
    ids, how = load_token_ids(cfg["model"], cfg["text"], steps * per_step, model.config.vocab_size)
    batches = torch.tensor(ids[: steps * per_step], dtype=torch.long).view(steps, MICRO_BATCH, SEQ_LEN)
    load_s = time.perf_counter() - t_start

    step_s, losses = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        x = batches[step]  # [2, 256]
        loss = model(input_ids=x, labels=x).loss  # plain causal mask, shifted mean CE
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        losses.append(float(loss))
        print(f"[pytorch {cfg['trainable']}] step {step + 1}/{steps} loss {losses[-1]:.4f} "
              f"gnorm {float(gn):.3g} {per_step / step_s[-1]:.0f} tok/s", file=sys.stderr, flush=True)
    timed = step_s[cfg["warmup"]:]
    print(json.dumps({
        "tokens_per_second": per_step * len(timed) / sum(timed),
        "step_seconds": timed,
        "tokens_per_step": per_step,
        "total_parameters": n_total,
        "trainable_parameters": n_trainable,
        "peak_rss_kib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "baseline_rss_kib": baseline_rss_kib,
        "model_class": type(model).__name__,
        "attn_implementation": model.config._attn_implementation,
        "missing_keys": missing,
        "data": how,
        "load_seconds": load_s,
        "losses": losses,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }))


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------
def run_child(cmd, env, log_path):
    """Runs cmd to completion with stdout captured and stderr to log_path; returns (stdout, seconds,
    peak RSS bytes of that process alone via wait4)."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    if p.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}); log {log_path}:\n{tail}")
    return out, seconds, ru.ru_maxrss * 1024


def child_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLAFORGE_NUM_THREADS"):
        env[k] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def ours_baseline_rss(args):
    """Peak RSS of `mlaforge --help`: the process with its libraries loaded (LibTorch) and nothing else."""
    _, _, rss = run_child([args.bin, "--help"], child_env(args.threads), os.path.join(args.scratch, "baseline.log"))
    return rss


def ensure_model(args):
    if args.model:
        return os.path.abspath(args.model)
    assets = args.assets
    if args.quick:
        folder = os.path.join(args.scratch, "stories260K-mla")
        src = os.path.join(assets, "models/stories260K/stories260K.bin")
        conv = ["--rope-dim", "8", "--kv-lora-rank", "16", "--calib-docs", "64"]
    else:
        folder = os.path.join(args.scratch, "smollm2-mla")
        src = None
        conv = ["--rope-dim", "64", "--kv-lora-rank", "128", "--calib-docs", "32"]
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    if src is None:  # the default model: the one the build downloaded (build/default_model.txt)
        src = os.environ.get("MLAFORGE_DEFAULT_MODEL")
        for build in (os.environ.get("MLAFORGE_BUILD"), os.path.join(ROOT, "build"),
                      os.path.dirname(os.path.dirname(args.bin))):
            if not src and build and os.path.exists(os.path.join(build, "default_model.txt")):
                with open(os.path.join(build, "default_model.txt")) as f:
                    src = f.read().strip()
        if not src:
            raise SystemExit("no default model: set MLAFORGE_DEFAULT_MODEL or pass --model")
    cmd = [args.bin, "--threads", str(args.threads), "convert", src, folder, "--mode", "deployable",
           "--calib", os.path.join(assets, "text/tinystories_val_part1.txt")] + conv
    print("converting:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def training_text(args):
    """The text both sides train on: a scratch copy with the paragraphs joined into one document, or the
    original file (one document per paragraph)."""
    src = args.text or os.path.join(args.assets, "text/tinystories_val_part1.txt")
    if args.docs == "paragraphs":
        return src
    dst = os.path.join(args.scratch, "tinystories_one_document.txt")
    with open(src, encoding="utf-8") as f:
        paragraphs = [p.strip() for p in f.read().split("\n\n") if p.strip()]
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join(paragraphs) + "\n")
    return dst


def write_recipe(path, model, text, trainable, steps, out_dir, lr):
    # Every key the comparison depends on is written out; the rest are recipes/README.md defaults.
    recipe = f"""# written by bench/train_bench.py
model:
  path: {model}
  dtype: fp32
  trainable: {trainable}
data:
  train: {text}
  format: text
  packing: true
  max_seq_len: {SEQ_LEN}
  num_workers: 1
train:
  max_steps: {steps}
  device: cpu
  log_every: 1
  export_at_end: false
  output_dir: {out_dir}
eval:
  at_start: false
  at_end: false
optim:
  lr: {lr}
  weight_decay: 0.0
  grad_clip: 1.0
schedule:
  warmup: 0
  decay: constant
batch:
  micro_batch_size: {MICRO_BATCH}
  grad_accumulation: 1
checkpoint:
  every: 0
log:
  png: false
  jsonl: true
  progress: never
"""
    with open(path, "w") as f:
        f.write(recipe)


def run_ours(args, model, text, trainable, run_dir):
    out_dir = os.path.join(run_dir, "out")
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)  # a fresh run: no resume, a fresh token cache (built before the loop anyway)
    recipe = os.path.join(run_dir, "recipe.yaml")
    write_recipe(recipe, model, text, trainable, args.warmup + args.steps, out_dir, args.lr)
    cmd = [args.bin, "--threads", str(args.threads), "train", recipe]
    _, wall, rss = run_child(cmd, child_env(args.threads), os.path.join(run_dir, "mlaforge.log"))
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r.get("split", "train") == "train"]
    timed = [r for r in train if r["step"] > args.warmup]
    if len(timed) != args.steps:
        raise SystemExit(f"{out_dir}/metrics.jsonl: {len(timed)} timed steps, expected {args.steps}")
    tps = [r["tokens_per_s"] for r in timed]
    tokens_per_step = report["tokens"] / report["steps"]
    return {
        # equal tokens per step: total tokens / total seconds = harmonic mean of the per-step rates
        "tokens_per_second": len(tps) / sum(1.0 / t for t in tps),
        "tokens_per_step": tokens_per_step,
        # wall time between consecutive steps' log records (the step plus microseconds of logging): exact
        # even when steps hold different token counts (--docs paragraphs)
        "step_seconds": [train[i]["time"] - train[i - 1]["time"]
                         for i in range(1, len(train)) if train[i]["step"] > args.warmup],
        "total_parameters": report["total_parameters"],
        "trainable_parameters": report["trainable_parameters"],
        "peak_rss": rss,
        "mem_gb_last": timed[-1].get("mem_gb"),
        "report_tokens_per_second": report["tokens_per_second"],
        "wall_seconds": wall,
        "losses": [r["loss"] for r in train],
    }


def tcmalloc_path():
    """libtcmalloc_minimal.so.4 as the dynamic linker knows it (the allocator the mlaforge binary links)."""
    out = subprocess.run(["ldconfig", "-p"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libtcmalloc_minimal.so.4 " in line:
            return line.split("=>")[-1].strip()
    raise SystemExit("--pytorch-tcmalloc: libtcmalloc_minimal.so.4 not found (ldconfig -p)")


def run_torch(args, model, text, trainable, run_dir):
    cfg = {"model": model, "text": text, "trainable": trainable, "threads": args.threads, "warmup": args.warmup,
           "steps": args.steps, "lr": args.lr}
    cmd = [args.python, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    env = child_env(args.threads)
    if args.pytorch_tcmalloc:
        env["LD_PRELOAD"] = tcmalloc_path()
    out, wall, rss = run_child(cmd, env, os.path.join(run_dir, "pytorch.log"))
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss"] = rss
    r["wall_seconds"] = wall
    return r


def loadavg():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_bytes(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="stories260K converted to MLA (seconds, not minutes)")
    ap.add_argument("--model", help="an existing model folder (both sides load it); default: converted here")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("MLAFORGE_BUILD", os.path.join(ROOT, "build")),
                                                  "bin", "mlaforge"))
    ap.add_argument("--python", default=sys.executable, help="interpreter of the PyTorch side")
    ap.add_argument("--assets", default=os.environ.get("MLAFORGE_ASSETS", os.path.join(ROOT, "..", "shared", "assets")))
    ap.add_argument("--text", help="training text (default: TinyStories validation part 1 from the assets)")
    ap.add_argument("--docs", choices=["joined", "paragraphs"], default="joined",
                    help="joined: one document, full packed rows (default); paragraphs: one document per paragraph")
    ap.add_argument("--scratch", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "mlaforge-train-bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per side (default 6; --quick 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first, per side")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per side, alternating; the best run of each side is reported")
    ap.add_argument("--configs", default="all,up_proj", help="trainable sets, comma-separated")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pytorch-tcmalloc", action="store_true",
                    help="preload tcmalloc_minimal into the PyTorch side too (mlaforge links it): an allocator-neutral ratio")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.worker:
        torch_worker(json.loads(args.worker))
        return
    if args.steps is None:
        args.steps = 20 if args.quick else 6
    args.bin = os.path.abspath(args.bin)
    args.assets = os.path.abspath(args.assets)
    os.makedirs(args.scratch, exist_ok=True)

    model = ensure_model(args)
    text = training_text(args)
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(f"model: {model}\nbinary: {args.bin}\ntext: {text} ({args.docs})\n"
          f"machine: {cpu}, {os.cpu_count()} CPUs; threads per side: {args.threads}; "
          f"{args.warmup} warm-up + {args.steps} timed steps of {MICRO_BATCH} x {SEQ_LEN} tokens, fp32, "
          f"best of {args.repeat} alternating run(s) per side; "
          f"PyTorch allocator: {'tcmalloc_minimal (LD_PRELOAD)' if args.pytorch_tcmalloc else 'glibc malloc'}\n"
          f"load average before: {loadavg()}", flush=True)

    ours_base = ours_baseline_rss(args)
    results = []
    for trainable in [c.strip() for c in args.configs.split(",") if c.strip()]:
        run_dir = os.path.join(args.scratch, f"run-{os.path.basename(model)}-{trainable}")
        os.makedirs(run_dir, exist_ok=True)
        # One side at a time, never both at once; with --repeat the sides alternate (ours, PyTorch, ours, ...)
        # so that a burst of load from elsewhere hits both, and each side keeps its best run.
        runs = {"ours": [], "pytorch": []}
        for rep in range(args.repeat):
            for side, fn in (("ours", run_ours), ("pytorch", run_torch)):
                r = fn(args, model, text, trainable, run_dir)
                runs[side].append(r)
                print(f"  {trainable} #{rep + 1}: {side} {r['tokens_per_second']:.1f} tok/s "
                      f"(load {loadavg()})", flush=True)
        best = {side: max(rs, key=lambda r: r["tokens_per_second"]) for side, rs in runs.items()}
        results.append({"trainable": trainable, "ours": best["ours"], "pytorch": best["pytorch"],
                        "all_runs_tokens_per_second": {side: [r["tokens_per_second"] for r in rs]
                                                       for side, rs in runs.items()},
                        # the least disturbed single step of each side over all its runs
                        "fastest_step_seconds": {side: min(min(r["step_seconds"]) for r in rs)
                                                 for side, rs in runs.items()}})

    print(f"\nload average after: {loadavg()}")
    ref0 = results[0]["pytorch"]
    print(f"PyTorch side: {ref0['model_class']} ({ref0['attn_implementation']} attention), torch {ref0['torch']}, "
          f"transformers {ref0['transformers']}, data: {ref0['data']}; unpacked contiguous {SEQ_LEN}-token windows "
          f"with a plain causal mask (same tokens per step and FLOPs as the packed rows of ours)")
    if ref0["missing_keys"]:
        print(f"WARNING: transformers initialised weights missing from the folder: {ref0['missing_keys'][:5]} ...")
    for r in results:
        o = r["ours"]
        if abs(o["tokens_per_step"] - MICRO_BATCH * SEQ_LEN) > 0.5:
            print(f"note ({r['trainable']}): ours averaged {o['tokens_per_step']:.0f} real tokens per step "
                  f"({o['tokens_per_step'] / (MICRO_BATCH * SEQ_LEN):.0%} of the {MICRO_BATCH * SEQ_LEN} positions "
                  "computed): its tokens/s counts real tokens only")
        if o["trainable_parameters"] != r["pytorch"]["trainable_parameters"]:
            print(f"note ({r['trainable']}): trainable parameters differ: ours {o['trainable_parameters']:,}, "
                  f"PyTorch {r['pytorch']['trainable_parameters']:,}")
    print()
    print("| trainable | parameters (trained / total) | ours tokens/s | PyTorch tokens/s | ours / PyTorch "
          "| ours peak RSS | PyTorch peak RSS | ours B/param | PyTorch B/param "
          "| ours B/param above start | PyTorch B/param above start | ratio of fastest steps |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        o, p = r["ours"], r["pytorch"]
        print(f"| {r['trainable']} | {o['trainable_parameters'] / 1e6:.3f}M / {o['total_parameters'] / 1e6:.3f}M "
              f"| {o['tokens_per_second']:.0f} | {p['tokens_per_second']:.0f} "
              f"| **{o['tokens_per_second'] / p['tokens_per_second']:.2f}x** "
              f"| {fmt_bytes(o['peak_rss'])} | {fmt_bytes(p['peak_rss'])} "
              f"| {o['peak_rss'] / o['total_parameters']:.1f} | {p['peak_rss'] / p['total_parameters']:.1f} "
              f"| {(o['peak_rss'] - ours_base) / o['total_parameters']:.1f} "
              f"| {(p['peak_rss'] - p['baseline_rss_kib'] * 1024) / p['total_parameters']:.1f} "
              f"| {r['fastest_step_seconds']['pytorch'] / r['fastest_step_seconds']['ours']:.2f}x |")
    print(f"\n(\"start\": the process before any model: ours {fmt_bytes(ours_base)} (`mlaforge --help`, LibTorch "
          f"loaded), PyTorch {fmt_bytes(ref0['baseline_rss_kib'] * 1024)} (interpreter, torch and transformers "
          "imported); tokens/s: each side's best run; ratio of fastest steps: PyTorch's fastest step time / "
          "ours' over all runs (the least disturbed steps on a shared machine); step-time spread of the best "
          "runs, ours / PyTorch: "
          + "; ".join(f"{r['trainable']} {min(r['ours']['step_seconds']):.3f}-{max(r['ours']['step_seconds']):.3f} s / "
                      f"{min(r['pytorch']['step_seconds']):.3f}-{max(r['pytorch']['step_seconds']):.3f} s" for r in results)
          + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "threads": args.threads, "ours_start_rss": ours_base, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
