"""Reference files for the GGUF and llama2.c importers (tests/core/gguf_test.cpp, tests/torch/import_test.cpp).

Writes under out_dir/gguf/:
  types.gguf / types_v2.gguf     one tensor of every supported ggml type (+ metadata of every value type),
                                 written by the real `gguf` package; types_v2 is the same file stamped
                                 version 2 (v2 and v3 share the little-endian layout)
  types_ref.safetensors          the gguf package's dequantisation of each tensor (float32, row-major)
  align64.gguf                   general.alignment = 64
  unsupported.gguf               a Q2_K tensor (a type mlaforge does not dequantise)
  tiny_llama_{f32,f16,quant}.gguf + _ref.safetensors
                                 a tiny llama with random weights, Q/K rows permuted the way llama.cpp's
                                 converter does; the _ref file holds the weights the importer must return
                                 (HF names, HF rotate_half layout): the originals for f32, the originals
                                 rounded to f16 for f16, and the gguf package's dequantisation, un-permuted,
                                 for quant (plus tiny_llama_orig.safetensors, the unquantised originals)
  tiny_qwen2.gguf + _ref.safetensors
                                 qwen2 architecture with q/k/v biases (llama.cpp does not permute these)
  smollm2_ref.safetensors        when the SmolLM2-135M Q4_1 GGUF is present: a few of its tensors
                                 dequantised by the gguf package, in GGUF layout and (for attn_q/attn_k of
                                 layer 0) in HF layout
  stories260K_hf.safetensors     when the stories260K asset is present: its weights read with numpy and
                                 converted to HF names/layout like transformers' convert script does
  tiny_untied.bin + tiny_untied_hf.safetensors
                                 a llama2.c checkpoint with an untied classifier (negative vocab_size)
The C++ tests hard-code the metadata values written here: change both together.
"""
from default_model import find_default_model
import os
import pathlib
import struct

import numpy as np
from safetensors.numpy import save_file

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V


def _atomic_save(tensors: dict, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def _write_gguf(path: str, arch: str, fill, alignment: int | None = None) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    w = gguf.GGUFWriter(tmp, arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def _add_tensor(w, name: str, data: np.ndarray, qtype: Q) -> np.ndarray:
    """Adds `data` (float32, row-major) stored as qtype; returns what the gguf package dequantises it to."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, data)
        return data
    if qtype == Q.F16:
        h = data.astype(np.float16)
        w.add_tensor(name, h)
        return h.astype(np.float32)
    q = gguf.quants.quantize(data, qtype)
    w.add_tensor(name, q, raw_dtype=qtype)
    return gguf.quants.dequantize(q, qtype).reshape(data.shape).astype(np.float32)


# ---- every type + metadata ------------------------------------------------------------------------

def write_types(folder: str) -> None:
    rng = np.random.default_rng(1234)
    refs = {}

    def special_row(n):
        # zeros, tiny (f16/bf16 subnormal range), large, negative values
        base = np.array([0.0, -0.0, 1.0, -1.0, 6.0e-8, -3.0e-6, 65504.0, 1.0e-30, 3.0e38, -2.5, 0.1, 1.0 / 3.0],
                        dtype=np.float32)
        return np.resize(base, n)

    def fill(w):
        w.add_uint8("test.u8", 200)
        w.add_int8("test.i8", -100)
        w.add_uint16("test.u16", 60000)
        w.add_int16("test.i16", -30000)
        w.add_uint32("test.u32", 4000000000)
        w.add_int32("test.i32", -2000000000)
        w.add_float32("test.f32", 1e-5)
        w.add_uint64("test.u64", 2**63 + 5)
        w.add_int64("test.i64", -(2**40))
        w.add_float64("test.f64", -2.5e-300)
        w.add_bool("test.bool", True)
        w.add_string("test.string", "héllo ✓ GGUF")
        w.add_key_value("test.empty_string", "", V.STRING)  # add_string() skips empty strings
        w.add_key_value("test.arr_i16", [-1, 2, -3], V.ARRAY, sub_type=V.INT16)
        w.add_key_value("test.arr_u64", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
        w.add_key_value("test.arr_f32", [0.5, -1.25, 3.0], V.ARRAY, sub_type=V.FLOAT32)
        w.add_key_value("test.arr_f64", [1e300], V.ARRAY, sub_type=V.FLOAT64)
        w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
        w.add_key_value("test.arr_str", ["a", "", "ünï"], V.ARRAY, sub_type=V.STRING)
        w.add_key_value("test.arr_nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)

        shapes = {
            Q.F32: (3, 64), Q.F16: (5, 64), Q.BF16: (4, 96),
            Q.Q8_0: (6, 64), Q.Q4_0: (7, 96), Q.Q4_1: (2, 3, 64), Q.Q5_0: (3, 64), Q.Q5_1: (5, 32),
        }
        for qtype, shape in shapes.items():
            data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
            data.reshape(-1, shape[-1])[0] = special_row(shape[-1]) if qtype in (Q.F32, Q.BF16) else \
                np.resize(np.array([0.0, 1.0, -1.0, 6.0e-8, 0.5, -0.25], dtype=np.float32), shape[-1])
            name = f"t_{qtype.name.lower()}"
            refs[name] = _add_tensor(w, name, data, qtype)
        # K-quants (the package only dequantises them): random block bytes with sane float16 scales
        for qtype, d_offsets in ((Q.Q4_K, (0, 2)), (Q.Q5_K, (0, 2)), (Q.Q6_K, (208,))):
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            rows, blocks_per_row = 3, 2
            raw = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
            for off in d_offsets:
                raw[:, off:off + 2] = (rng.uniform(0.001, 0.05, size=(rows * blocks_per_row, 1))
                                       .astype(np.float16).view(np.uint8))
            raw = raw.reshape(rows, blocks_per_row * type_size)
            name = f"t_{qtype.name.lower()}"
            w.add_tensor(name, raw, raw_dtype=qtype)
            refs[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        # a block of all zeros (d = 0) in each block format
        for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
            name = f"zeros_{qtype.name.lower()}"
            refs[name] = _add_tensor(w, name, np.zeros((1, 32), dtype=np.float32), qtype)
        # big enough for the multithreaded path (>= 2^18 elements)
        big = (rng.standard_normal((256, 1024)) * 0.05).astype(np.float32)
        refs["big_q4_1"] = _add_tensor(w, "big_q4_1", big, Q.Q4_1)
        refs["big_f16"] = _add_tensor(w, "big_f16", big, Q.F16)
        refs["vector"] = _add_tensor(w, "vector", np.arange(7, dtype=np.float32) - 3.0, Q.F32)

    path = os.path.join(folder, "types.gguf")
    _write_gguf(path, "testarch", fill)
    _atomic_save(refs, os.path.join(folder, "types_ref.safetensors"))
    data = bytearray(pathlib.Path(path).read_bytes())
    data[4:8] = struct.pack("<I", 2)
    tmp = os.path.join(folder, f"types_v2.gguf.{os.getpid()}.tmp")
    pathlib.Path(tmp).write_bytes(bytes(data))
    os.replace(tmp, os.path.join(folder, "types_v2.gguf"))

    def fill_aligned(w):
        w.add_string("general.name", "aligned")
        _add_tensor(w, "a", np.arange(3, dtype=np.float32), Q.F32)  # 12 bytes: next tensor padded to 64
        _add_tensor(w, "b", np.arange(32, dtype=np.float32) * 0.5, Q.F16)

    _write_gguf(os.path.join(folder, "align64.gguf"), "testarch", fill_aligned, alignment=64)

    def fill_unsupported(w):
        w.add_tensor("blk.0.attn_q.weight", np.zeros((2, 84), dtype=np.uint8), raw_dtype=Q.Q2_K)

    _write_gguf(os.path.join(folder, "unsupported.gguf"), "llama", fill_unsupported)


# ---- tiny llama ------------------------------------------------------------------------------------

TINY = dict(vocab=320, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, head_dim=16)


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows (2, d/2) -> (d/2, 2) (rotate_half order -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llamacpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_hf_weights(seed: int, with_bias: bool = False, tied: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    c = TINY
    D, F, H, KV, d = c["hidden"], c["inter"], c["heads"], c["kv_heads"], c["head_dim"]

    def r(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": r(c["vocab"], D), "model.norm.weight": 1.0 + r(D)}
    if not tied:
        w["lm_head.weight"] = r(c["vocab"], D)
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + r(D)
        w[p + "post_attention_layernorm.weight"] = 1.0 + r(D)
        w[p + "self_attn.q_proj.weight"] = r(H * d, D)
        w[p + "self_attn.k_proj.weight"] = r(KV * d, D)
        w[p + "self_attn.v_proj.weight"] = r(KV * d, D)
        w[p + "self_attn.o_proj.weight"] = r(D, H * d)
        w[p + "mlp.gate_proj.weight"] = r(F, D)
        w[p + "mlp.up_proj.weight"] = r(F, D)
        w[p + "mlp.down_proj.weight"] = r(D, F)
        if with_bias:
            w[p + "self_attn.q_proj.bias"] = r(H * d)
            w[p + "self_attn.k_proj.bias"] = r(KV * d)
            w[p + "self_attn.v_proj.bias"] = r(KV * d)
    return w


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.N.rest
    return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:])]}"


def tiny_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["▁"] + [f"▁{ch}" for ch in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz") + \
        ["▁the", "he", "in", "er", "an", "on", "th"]
    tokens += pieces
    assert len(tokens) <= TINY["vocab"]
    while len(tokens) < TINY["vocab"]:
        tokens.append(f"<extra_{len(tokens)}>")
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def add_llama_metadata(w, arch: str, rope_scaling: bool = False) -> None:
    c = TINY
    w.add_string("general.name", "tiny-" + arch)
    w.add_uint32(f"{arch}.context_length", 256)
    w.add_uint32(f"{arch}.embedding_length", c["hidden"])
    w.add_uint32(f"{arch}.block_count", c["layers"])
    w.add_uint32(f"{arch}.feed_forward_length", c["inter"])
    w.add_uint32(f"{arch}.attention.head_count", c["heads"])
    w.add_uint32(f"{arch}.attention.head_count_kv", c["kv_heads"])
    w.add_uint32(f"{arch}.rope.dimension_count", c["head_dim"])
    w.add_float32(f"{arch}.rope.freq_base", 500000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{arch}.vocab_size", c["vocab"])
    if rope_scaling:
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", 2.0)
    tokens, scores, types = tiny_vocab()
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_key_value("tokenizer.ggml.tokens", tokens, V.ARRAY, sub_type=V.STRING)
    w.add_key_value("tokenizer.ggml.scores", scores, V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("tokenizer.ggml.token_type", types, V.ARRAY, sub_type=V.INT32)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_space_prefix", True)
    w.add_string("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")


def llama3_rope_factors(dim, theta, factor, low, high, original) -> np.ndarray:
    """Per-frequency divisors of Llama-3.1 RoPE scaling (the rope_freqs tensor llama.cpp stores)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * np.pi * theta ** (i / dim)
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_llama(folder: str) -> None:
    c = TINY
    for variant in ("f32", "f16", "quant"):
        tied = variant == "quant"
        hf = tiny_hf_weights(seed=7, tied=tied)
        ref = {}

        def fill(w, hf=hf, ref=ref, variant=variant):
            add_llama_metadata(w, "llama", rope_scaling=(variant == "f16"))
            for name, t in hf.items():
                g = gguf_name(name)
                stored = t
                if name.endswith("q_proj.weight"):
                    stored = llamacpp_permute(t, c["heads"])
                elif name.endswith("k_proj.weight"):
                    stored = llamacpp_permute(t, c["kv_heads"])
                if t.ndim == 1:
                    qtype = Q.F32  # llama.cpp keeps norms in float32
                elif variant == "f32":
                    qtype = Q.F32
                elif variant == "f16":
                    qtype = Q.F16
                else:
                    qtype = {"token_embd.weight": Q.Q8_0}.get(g)
                    if qtype is None:
                        qtype = Q.Q4_1 if "ffn" in g else (Q.Q4_0 if "attn_q" in g or "attn_k" in g else
                                                           (Q.BF16 if "attn_v" in g else Q.Q8_0))
                deq = _add_tensor(w, g, stored, qtype)
                if name.endswith("q_proj.weight"):
                    deq = llamacpp_unpermute(deq, c["heads"])
                elif name.endswith("k_proj.weight"):
                    deq = llamacpp_unpermute(deq, c["kv_heads"])
                ref[name] = deq

            if variant == "quant":  # Llama-3.1-style scaling, stored as llama.cpp does: per-frequency factors
                w.add_tensor("rope_freqs.weight", llama3_rope_factors(c["head_dim"], 500000.0, 8.0, 1.0, 4.0, 8192))

        _write_gguf(os.path.join(folder, f"tiny_llama_{variant}.gguf"), "llama", fill)
        if variant == "f32":
            for k in hf:
                assert np.array_equal(ref[k], hf[k]), k
        _atomic_save(ref, os.path.join(folder, f"tiny_llama_{variant}_ref.safetensors"))
        if variant == "quant":
            _atomic_save(hf, os.path.join(folder, "tiny_llama_orig.safetensors"))

    hf = tiny_hf_weights(seed=11, with_bias=True)

    def fill_qwen(w):
        add_llama_metadata(w, "qwen2")
        for name, t in hf.items():
            _add_tensor(w, gguf_name(name), t, Q.F32)

    _write_gguf(os.path.join(folder, "tiny_qwen2.gguf"), "qwen2", fill_qwen)
    _atomic_save(hf, os.path.join(folder, "tiny_qwen2_ref.safetensors"))


# ---- SmolLM2 ---------------------------------------------------------------------------------------

def find_smollm2() -> str | None:
    return find_default_model()


def write_smollm2(folder: str) -> None:
    path = find_smollm2()
    if path is None:
        return
    r = gguf.GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    refs = {}

    def deq(name, rows=None):
        t = by_name[name]
        data = t.data if rows is None else t.data[:rows]
        return np.ascontiguousarray(gguf.quants.dequantize(np.asarray(data), t.tensor_type), dtype=np.float32)

    refs["token_embd.weight[:16]"] = deq("token_embd.weight", rows=16)
    refs["blk.0.attn_k.weight"] = deq("blk.0.attn_k.weight")
    refs["blk.0.attn_q.weight"] = deq("blk.0.attn_q.weight")
    refs["blk.29.ffn_down.weight[:8]"] = deq("blk.29.ffn_down.weight", rows=8)
    refs["blk.0.attn_norm.weight"] = deq("blk.0.attn_norm.weight")
    refs["output_norm.weight"] = deq("output_norm.weight")
    n_head = int(r.fields["llama.attention.head_count"].contents())
    n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
    refs["hf:model.layers.0.self_attn.q_proj.weight"] = llamacpp_unpermute(refs["blk.0.attn_q.weight"], n_head)
    refs["hf:model.layers.0.self_attn.k_proj.weight"] = llamacpp_unpermute(refs["blk.0.attn_k.weight"], n_kv)
    _atomic_save(refs, os.path.join(folder, "smollm2_ref.safetensors"))
    with open(os.path.join(folder, "smollm2_path.txt"), "w") as f:
        f.write(path)


# ---- llama2.c --------------------------------------------------------------------------------------

def hf_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers' convert_llama_weights_to_hf: per head, rows (d/2, 2) -> (2, d/2)."""
    dim1, dim2 = w.shape
    return w.reshape(n_heads, dim1 // n_heads // 2, 2, dim2).swapaxes(1, 2).reshape(dim1, dim2)


def llama2c_to_hf(path: str) -> dict:
    raw = pathlib.Path(path).read_bytes()
    dim, hidden, L, H, KVH, vocab, seq = struct.unpack("<7i", raw[:28])
    tied = vocab > 0
    V_ = abs(vocab)
    head = dim // H
    kv_dim = KVH * head
    a = np.frombuffer(raw, dtype=np.float32, offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = a[pos:pos + n].reshape(shape).copy()
        pos += n
        return out

    emb = take(V_, dim)
    rms_att = take(L, dim)
    wq = take(L, dim, dim)
    wk = take(L, kv_dim, dim)
    wv = take(L, kv_dim, dim)
    wo = take(L, dim, dim)
    rms_ffn = take(L, dim)
    w1 = take(L, hidden, dim)
    w2 = take(L, dim, hidden)
    w3 = take(L, hidden, dim)
    rms_final = take(dim)
    out = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    if not tied:
        take(seq, head // 2)
        take(seq, head // 2)
        out["lm_head.weight"] = take(V_, dim)
    for i in range(L):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = rms_att[i]
        out[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        out[p + "self_attn.q_proj.weight"] = hf_permute(wq[i], H)
        out[p + "self_attn.k_proj.weight"] = hf_permute(wk[i], KVH)
        out[p + "self_attn.v_proj.weight"] = wv[i]
        out[p + "self_attn.o_proj.weight"] = wo[i]
        out[p + "mlp.gate_proj.weight"] = w1[i]
        out[p + "mlp.down_proj.weight"] = w2[i]
        out[p + "mlp.up_proj.weight"] = w3[i]
    return out


def write_llama2c(folder: str, assets_dir: str) -> None:
    stories = os.path.join(assets_dir, "models", "stories260K", "stories260K.bin")
    if os.path.isfile(stories):
        _atomic_save(llama2c_to_hf(stories), os.path.join(folder, "stories260K_hf.safetensors"))

    # A small untied checkpoint: dim 32, hidden 48, 2 layers, 4 heads, 2 kv heads, vocab 40, seq 16.
    dim, hidden, L, H, KVH, V_, seq = 32, 48, 2, 4, 2, 40, 16
    head = dim // H
    rng = np.random.default_rng(99)
    n = (V_ * dim + L * dim + L * dim * dim + 2 * L * KVH * head * dim + L * dim * dim + L * dim +
         3 * L * hidden * dim + dim + 2 * seq * (head // 2) + V_ * dim)
    body = (rng.standard_normal(n) * 0.1).astype(np.float32)
    path = os.path.join(folder, "tiny_untied.bin")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, L, H, KVH, -V_, seq))
        f.write(body.tobytes())
    os.replace(tmp, path)
    _atomic_save(llama2c_to_hf(path), os.path.join(folder, "tiny_untied_hf.safetensors"))


def main(out_dir: str, assets_dir: str) -> None:
    folder = os.path.join(out_dir, "gguf")
    os.makedirs(folder, exist_ok=True)
    write_types(folder)
    write_tiny_llama(folder)
    write_smollm2(folder)
    write_llama2c(folder, assets_dir)
