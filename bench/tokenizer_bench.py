#!/usr/bin/env python3
"""Tokenizer throughput, ours vs the reference libraries, single-threaded, on the same > 1 MB of text.

    python bench/tokenizer_bench.py [--bin build/bench/bench_core_tokenizer_bench] [--assets ../shared/assets]
                                    [--repeat 5] [--smollm2-gguf PATH]

Text: TinyStories validation paragraphs (470 KB, one document per paragraph) and the Sky-T1 long
reasoning outputs (840 KB with LaTeX, one document each). Each side encodes every document (no special
tokens) and decodes the ids back; the best of --repeat runs is reported, after one warm-up run.
References: HF `tokenizers` (encode_batch_fast / decode_batch with TOKENIZERS_PARALLELISM=false and
RAYON_NUM_THREADS=1, i.e. one thread) for tokenizer.json files and SmolLM2's GGUF vocabulary;
`sentencepiece` (num_threads=1) for .model files. Token counts are compared as a sanity check.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))


sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from refs_tokenizers import write_corpus  # noqa: E402  (the corpus format the C++ bench reads)


def load_docs(assets):
    docs = []
    with open(os.path.join(assets, "text/tinystories_val_part1.txt"), encoding="utf-8") as f:
        docs += [p for p in f.read().split("\n\n") if p]
    for name in ("Sky-T1-math-correct-5K-27B_aime24.jsonl", "Sky-T1-math-correct-5K-27B_amc23.jsonl"):
        with open(os.path.join(assets, "reasoning/skythought", name), encoding="utf-8") as f:
            docs += [json.loads(line)["code"][0] for line in f if line.strip()]
    return docs


def best_of(repeat, fn):
    fn()  # warm-up
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_hf(tk, docs, repeat):
    # encode_batch_fast (no offsets; tokenizers >= 0.21) is HF's quickest path; on one thread here.
    encode = getattr(tk, "encode_batch_fast", tk.encode_batch)
    enc_s, encs = best_of(repeat, lambda: encode(docs, add_special_tokens=False))
    ids = [e.ids for e in encs]
    dec_s, _ = best_of(repeat, lambda: tk.decode_batch(ids, skip_special_tokens=False))
    return enc_s, dec_s, sum(len(i) for i in ids)


def bench_sp(sp, docs, repeat):
    enc_s, ids = best_of(repeat, lambda: sp.encode(docs, num_threads=1))
    dec_s, _ = best_of(repeat, lambda: sp.decode(ids, num_threads=1))
    return enc_s, dec_s, sum(len(i) for i in ids)


def bench_ours(binary, corpus, repeat, tokenizer=None, gguf_json=None):
    cmd = [binary, "--docs", corpus, "--repeat", str(repeat + 1), "--json"]
    cmd += ["--tokenizer", tokenizer] if tokenizer else ["--gguf-vocab-json", gguf_json]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return r["encode_s"], r["decode_s"], r["tokens"], r["load_s"]


def smollm2_reference(gguf_path, tmp):
    """HF tokenizers built from the GGUF vocabulary like SmolLM2's tokenizer.json, and the vocab as JSON."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    reader = gguf.GGUFReader(gguf_path)

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    vocab = {"model": field("tokenizer.ggml.model"), "pre": field("tokenizer.ggml.pre", "default"),
             "tokens": field("tokenizer.ggml.tokens"), "scores": None,
             "token_types": field("tokenizer.ggml.token_type"), "merges": field("tokenizer.ggml.merges"),
             "bos": field("tokenizer.ggml.bos_token_id"), "eos": field("tokenizer.ggml.eos_token_id"),
             "unk": field("tokenizer.ggml.unknown_token_id"), "pad": field("tokenizer.ggml.padding_token_id"),
             "add_bos": bool(field("tokenizer.ggml.add_bos_token", False)), "add_space_prefix": False}
    path = os.path.join(tmp, "smollm2_vocab.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    tokens, types = vocab["tokens"], vocab["token_types"]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ", 1)) for m in vocab["merges"]]))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i in range(len(tokens)) if types[i] == 3])
    return tk, path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bench", "bench_core_tokenizer_bench"))
    ap.add_argument("--assets", default=os.path.join(HERE, "..", "..", "shared", "assets"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smollm2-gguf", default=os.environ.get(
        "MLAFORGE_SMOLLM2_GGUF", os.path.expanduser("~/.cache/mlaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build it (cmake --build build --target bench_core_tokenizer_bench) or pass --bin")

    from tokenizers import Tokenizer
    import sentencepiece as spm

    docs = load_docs(args.assets)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.bin")
        write_corpus(corpus, docs)
        cases = []
        for name in ("llama3", "qwen3", "llama2"):
            path = os.path.join(args.assets, "tokenizers", name, "tokenizer.json")
            if os.path.exists(path):
                cases.append((f"{name} tokenizer.json", "hf", path, lambda p=path: Tokenizer.from_file(p), None))
        for label, rel in (("llama2 tokenizer.model", "tokenizers/llama2-sentencepiece/tokenizer.model"),
                           ("stories260K tok512.model", "models/stories260K/tok512.model")):
            path = os.path.join(args.assets, rel)
            if os.path.exists(path):
                cases.append((label, "sp", path, lambda p=path: spm.SentencePieceProcessor(model_file=p), None))
        if os.path.exists(args.smollm2_gguf):
            tk, vocab_json = smollm2_reference(args.smollm2_gguf, tmp)
            cases.append(("SmolLM2 GGUF vocab", "hf", None, lambda tk=tk: tk, vocab_json))
        print(f"{len(docs)} documents, {mb:.2f} MB; one thread each; best of {args.repeat}", flush=True)
        print(f"{'tokenizer':26} {'tokens':>8} | {'encode MB/s':>25} | {'decode MB/s':>25}")
        print(f"{'':26} {'':>8} | {'ours':>7} {'ref':>7} {'ratio':>9} | {'ours':>7} {'ref':>7} {'ratio':>9}")
        for label, kind, path, make_ref, gguf_json in cases:
            ref = make_ref()
            enc, dec, n_ref = (bench_hf if kind == "hf" else bench_sp)(ref, docs, args.repeat)
            o_enc, o_dec, n_ours, load_s = bench_ours(args.bin, corpus, args.repeat, path, gguf_json)
            same = "" if n_ours == n_ref else f"  TOKEN COUNT DIFFERS: ours {n_ours}, reference {n_ref}"
            print(f"{label:26} {n_ref:8d} | {mb / o_enc:7.1f} {mb / enc:7.1f} {enc / o_enc:8.2f}x | "
                  f"{mb / o_dec:7.1f} {mb / dec:7.1f} {dec / o_dec:8.2f}x{same}", flush=True)
            rows.append({"tokenizer": label, "mb": mb, "tokens": n_ref, "ours_encode_mb_s": mb / o_enc,
                         "ref_encode_mb_s": mb / enc, "ours_decode_mb_s": mb / o_dec, "ref_decode_mb_s": mb / dec,
                         "ours_load_s": load_s, "token_counts_equal": n_ours == n_ref})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
