#!/usr/bin/env python3
"""Synthetic Hugging Face llama folders with the exact shapes of real checkpoints, for the conversion
benchmark (bench/convert_bench.sh): random bf16 weights, a real config.json, sharded safetensors with an
index as `save_pretrained` writes them, and the real Llama-3 tokenizer from ../shared/assets.

    make_synthetic_checkpoint.py --shape llama-3.2-1b --out /tmp/synth-1b
    make_synthetic_checkpoint.py --shape llama-3-8b --out /tmp/synth-8b [--max-shard-gb 5] [--seed 0]

Weights are N(0, 0.02) (the configs' initializer_range), RMSNorm weights 1. The values only have to be
plausible: the benchmark measures time and memory, which do not depend on them.

Memory: each shard file is written tensor by tensor and each tensor in chunks of a few million values, so
the generator holds one chunk (tens of MB), not a shard, whatever the checkpoint size. The safetensors
header is computed from the shapes first (offsets need no data), then the data is streamed after it.
numpy has no bfloat16, so float32 values are rounded to bf16 bit patterns (round to nearest even) and
written as uint16. The `safetensors` package re-opens every shard at the end as a format check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# The real config.json files (meta-llama/Llama-3.2-1B and meta-llama/Meta-Llama-3-8B), field for field.
CONFIGS = {
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    },
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    },
}

# Parameter counts of the real checkpoints (model cards / index total_size / 2), checked below.
EXPECTED_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3-8b": 8_030_261_248}

CHUNK = 1 << 23  # values generated at a time (32 MiB of float32)


def tensor_list(c: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, init) in the order transformers' state_dict lists them (which is how
    save_pretrained assigns tensors to shards)."""
    D, V, F = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    d = c.get("head_dim", D // c["num_attention_heads"])
    H, K = c["num_attention_heads"], c["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (V, D), "normal")]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (H * d, D), "normal"),
            (p + "self_attn.k_proj.weight", (K * d, D), "normal"),
            (p + "self_attn.v_proj.weight", (K * d, D), "normal"),
            (p + "self_attn.o_proj.weight", (D, H * d), "normal"),
            (p + "mlp.gate_proj.weight", (F, D), "normal"),
            (p + "mlp.up_proj.weight", (F, D), "normal"),
            (p + "mlp.down_proj.weight", (D, F), "normal"),
            (p + "input_layernorm.weight", (D,), "ones"),
            (p + "post_attention_layernorm.weight", (D,), "ones"),
        ]
    out.append(("model.norm.weight", (D,), "ones"))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, D), "normal"))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def plan_shards(tensors, max_shard_bytes: int) -> list[list]:
    """save_pretrained's rule: fill a shard in state_dict order; start a new one when the next tensor
    would push it over the limit (a tensor larger than the limit gets a shard of its own)."""
    shards, cur, cur_bytes = [], [], 0
    for t in tensors:
        nbytes = 2 * numel(t[1])
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(t)
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    return shards


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (no NaNs occur here)."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def write_shard(path: Path, tensors, rng: np.random.Generator, std: float) -> int:
    # safetensors writes its keys sorted (all tensors here have the same dtype); data in the same order.
    tensors = sorted(tensors, key=lambda t: t[0])
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        nbytes = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as safetensors pads it
    tmp = path.with_name(path.name + ".tmp")
    ones = to_bf16_bits(np.ones(CHUNK, np.float32))
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, init in tensors:
            left = numel(shape)
            while left > 0:
                n = min(CHUNK, left)
                if init == "ones":
                    f.write(ones[:n].tobytes())
                else:
                    x = rng.standard_normal(n, dtype=np.float32)
                    x *= np.float32(std)
                    f.write(to_bf16_bits(x).tobytes())
                left -= n
    os.replace(tmp, path)
    return offset


def copy_tokenizer(assets: Path, out: Path) -> None:
    src = assets / "tokenizers" / "llama3"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (src / name).is_file():
            sys.exit(f"make_synthetic_checkpoint: {src / name} not found (pass --assets)")
        shutil.copyfile(src / name, out / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--out", required=True, help="folder to create (outside the repository)")
    ap.add_argument("--max-shard-gb", type=float, default=None,
                    help="largest shard in GB (10^9 bytes); default: the real checkpoint's layout "
                         "(1B: one model.safetensors of 2.47 GB, 8B: 4 shards of at most 5 GB)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--assets", default=str(Path(__file__).resolve().parents[2] / "shared" / "assets"))
    ap.add_argument("--force", action="store_true", help="overwrite an existing folder")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    repo = Path(__file__).resolve().parents[1]
    if out == repo or repo in out.parents:
        sys.exit(f"make_synthetic_checkpoint: refusing to write into the repository ({out})")
    if out.exists():
        if not args.force:
            sys.exit(f"make_synthetic_checkpoint: {out} exists (pass --force to overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config = CONFIGS[args.shape]
    tensors = tensor_list(config)
    params = sum(numel(t[1]) for t in tensors)
    if params != EXPECTED_PARAMS[args.shape]:
        sys.exit(f"internal: {args.shape} has {params} parameters, the real checkpoint {EXPECTED_PARAMS[args.shape]}")
    # HF's default max_shard_size is "5GB" (10^9 bytes); Llama-3.2-1B (2.47 GB) is a single file.
    max_shard = int((args.max_shard_gb if args.max_shard_gb is not None else 5.0) * 1e9)
    shards = plan_shards(tensors, max_shard)

    rng = np.random.default_rng(args.seed)
    start = time.time()
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(out / name, shard, rng, args.std)
        for t in shard:
            weight_map[t[0]] = name
        print(f"  {name}: {len(shard)} tensors ({time.time() - start:.0f} s)", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True, "temperature": 0.6,
                    "top_p": 0.9}, indent=2) + "\n")
    copy_tokenizer(Path(args.assets), out)

    # Format check with the reference implementation (reads headers only).
    from safetensors import safe_open

    seen = 0
    for name in sorted(set(weight_map.values())):
        with safe_open(str(out / name), framework="numpy") as f:
            seen += len(list(f.keys()))
    if seen != len(tensors):
        sys.exit(f"internal: safetensors lists {seen} tensors, expected {len(tensors)}")
    print(f"{args.shape}: {params:,} parameters, {total:,} bytes of bf16 in {len(shards)} file(s) -> {out} "
          f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
