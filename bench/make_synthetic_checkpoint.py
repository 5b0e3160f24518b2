#!/usr/bin/env python3
"""Synthetic Hugging Face llama folders with the exact shapes of real checkpoints, for the conversion
benchmark (bench/convert_bench.sh): random bf16 weights, a real config.json, sharded safetensors with an
index as `save_pretrained` writes them, and the real Llama-3 tokenizer from ../shared/assets.

    make_synthetic_checkpoint.py --shape llama-3.2-1b --out /tmp/synth-1b
    make_synthetic_checkpoint.py --shape llama-3-8b --out /tmp/synth-8b [--max-shard-gb 5] [--seed 0]
    make_synthetic_checkpoint.py --shape qwen2.5-7b --out /tmp/q --config-only [--mla 64 512]

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

# Config-only shapes (--config-only: the recipes' memory and speed estimates, tests/cli/recipes_validate.sh):
# the dimensions of the published config.json files of Qwen/Qwen2.5-7B-Instruct,
# mistralai/Mistral-7B-Instruct-v0.3, mistralai/Mixtral-8x7B-Instruct-v0.1 and google/gemma-2-9b-it, written
# from their public values (field names as transformers reads them; no file copied). Their base models have
# the same dimensions.
CONFIGS.update({
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "model_type": "qwen2",
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": 152064,
    },
    "mistral-7b-v0.3": {
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32768,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mixtral",
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    },
    "gemma-2-9b": {
        "architectures": ["Gemma2ForCausalLM"],
        "attention_bias": False,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "eos_token_id": [1, 107],
        "final_logit_softcapping": 30.0,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "model_type": "gemma2",
        "num_attention_heads": 16,
        "num_hidden_layers": 42,
        "num_key_value_heads": 8,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": 256000,
    },
})

# Parameter counts of the real checkpoints (model cards / index total_size / 2), checked below (weights) and
# by tests/cli/recipes_validate.sh against mlaforge's own count of each config.
EXPECTED_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3-8b": 8_030_261_248, "qwen2.5-7b": 7_615_616_512,
                   "mistral-7b-v0.3": 7_248_023_552, "mixtral-8x7b": 46_702_792_704, "gemma-2-9b": 9_241_705_984}


def mla_config(c: dict, rope_dim: int, kv_lora_rank: int) -> dict:
    """The config.json `mlaforge convert --rope-dim R --kv-lora-rank K` writes for a model of config `c`
    (convert/transmla.cpp mla_config_json, default options): the shape of the converted student, for
    estimates without converting real weights."""
    j = dict(c)
    H, L = c["num_attention_heads"], c["num_hidden_layers"]
    d = c.get("head_dim") or c["hidden_size"] // H
    rank = min(kv_lora_rank, 2 * c["num_key_value_heads"] * d - rope_dim)
    keep_family = c["model_type"] in ("gemma2", "mixtral")
    if keep_family:
        j.pop("head_dim", None)
        j["mlaforge_attention"] = "mla"
        if c["model_type"] == "gemma2":
            j["query_pre_attn_scalar"] = c.get("query_pre_attn_scalar", d)
    else:
        for key in ("head_dim", "mlp_bias", "attention_bias", "num_local_experts", "sliding_window",
                    "use_sliding_window", "max_window_layers", "rope_parameters"):
            j.pop(key, None)
        j["model_type"] = "deepseek_v3"
        j["architectures"] = ["DeepseekV3ForCausalLM"]
        j["first_k_dense_replace"] = L
    j["num_key_value_heads"] = H
    j["kv_lora_rank"] = rank
    j["q_lora_rank"] = None
    j["qk_rope_head_dim"] = rope_dim
    j["qk_nope_head_dim"] = d
    j["v_head_dim"] = d
    bias = c["model_type"] == "qwen2" or bool(c.get("attention_bias", False))  # Qwen2 always has q/k/v biases
    j["attention_bias"] = bias
    if bias:
        j["q_lora_rank"] = c["hidden_size"] + 1  # the query-bias anchor
    j["rope_interleave"] = True
    j["torch_dtype"] = "float32"
    j["mlaforge_latent_norm"] = False
    return j

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
    ap.add_argument("--config-only", action="store_true",
                    help="write config.json only (every shape; no weights, no tokenizer)")
    ap.add_argument("--mla", nargs=2, type=int, metavar=("ROPE_DIM", "KV_LORA_RANK"),
                    help="with --config-only: the config of the model converted with --rope-dim ROPE_DIM "
                         "--kv-lora-rank KV_LORA_RANK instead of the original")
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
    if args.config_only:
        if args.mla:
            config = mla_config(config, *args.mla)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        print(f"{args.shape}{' (MLA)' if args.mla else ''}: config.json -> {out}")
        return 0
    if args.mla:
        sys.exit("make_synthetic_checkpoint: --mla needs --config-only")
    if config["model_type"] != "llama":
        sys.exit(f"make_synthetic_checkpoint: weights are written for llama shapes only; use --config-only for {args.shape}")
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
