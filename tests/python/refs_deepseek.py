"""Numerical-parity references for MLA attention (read by tests/torch/mla_test.cpp).

Tiny random DeepseekV3ForCausalLM models (transformers, float32, eager attention), every layer a dense MLP
(first_k_dense_replace = num_hidden_layers: transformers builds a MoE block for every layer index >=
first_k_dense_replace, whatever n_routed_experts says), saved with save_pretrained to
out_dir/deepseek/<case>/ next to reference.safetensors:

  input_ids         (B, T) int64
  logits            (B, T, V) float32: transformers' logits for input_ids
  probe             (B, T, V) float32: fixed random P; loss = (logits * P).sum()
  grad.<hf name>    float32: d loss / d parameter, under the names the checkpoint is saved with

Cases:
  mla             q_lora_rank None (plain q_proj), n_routed_experts 0, default rope, interleaved rope rows
  mla_qlora_bias  q_lora_rank set (q_a_proj + q_a_layernorm + q_b_proj) and attention_bias (biases on
                  q_a_proj, kv_a_proj_with_mqa, o_proj); n_routed_experts 4 but no MoE layer
  mla_yarn        YaRN rope with DeepSeek's mscale / mscale_all_dim (cos/sin factor and softmax scale)
  mla_rotate_half rope_interleave False: rope rows in rotate_half layout

The value head dim (10) differs from the qk head dim (12 + 8) so nothing can silently assume they match.
Each case checks that the feature it exists for really changes transformers' output.
"""
from ref_stamp import make_stamp, up_to_date, write_stamp
import json
import math
import os
import shutil

import torch

CASES_VERSION = 1

BATCH, SEQ = 2, 24


def _base(**kw):
    d = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=12,
             v_head_dim=10, n_routed_experts=0, first_k_dense_replace=2, num_mtp_layers=0,
             max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    d.update(kw)
    return d


def case_table():
    return {
        "mla": (_base(), {}),
        "mla_qlora_bias": (_base(q_lora_rank=24, attention_bias=True, n_routed_experts=4, num_hidden_layers=3,
                                 first_k_dense_replace=3), {}),
        # factor 4 over an original context of 32; mscale != mscale_all_dim so both the cos/sin factor
        # (mscale(f, 1.0) / mscale(f, 0.8)) and the softmax-scale correction (mscale(f, 0.8)^2) are non-trivial.
        "mla_yarn": (_base(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                            "original_max_position_embeddings": 32, "mscale": 1.0,
                                            "mscale_all_dim": 0.8, "beta_fast": 32.0, "beta_slow": 1.0}),
                     {"yarn": True}),
        "mla_rotate_half": (_base(rope_interleave=False), {"rotate_half": True}),
    }


def _reinit(model, gen):
    """Unit-scale random weights: activations O(1), logits O(1..5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def make_case(folder, name, cfg_kwargs, flags, seed):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = DeepseekV3Config(**cfg_kwargs)
    config._attn_implementation = "eager"
    model = DeepseekV3ForCausalLM(config)
    assert model.config._attn_implementation == "eager", name
    for layer in model.model.layers:  # the point of first_k_dense_replace: no MoE block anywhere
        assert type(layer.mlp).__name__ == "DeepseekV3MLP", f"{name}: layer is {type(layer.mlp).__name__}"
        assert layer.mlp.gate_proj.out_features == config.intermediate_size, name
    _reinit(model, gen)
    model.eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)

    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=gen)
    logits = _logits(model, ids)
    probe = torch.randn(logits.shape, generator=gen)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad((logits * probe).sum(), list(params.values()))
    ref = {"input_ids": ids, "logits": logits.detach().contiguous(), "probe": probe}
    for k, g in zip(params.keys(), grads):
        ref["grad." + k] = g.detach().float().contiguous()

    with torch.no_grad():
        # Guard against a config field transformers silently ignores: the feature must change the output.
        if flags.get("yarn"):
            attns = [layer.self_attn for layer in model.model.layers]
            saved = [a.scaling for a in attns]
            for a in attns:
                a.scaling = config.qk_head_dim ** -0.5
            delta = _max_diff(_logits(model, ids), logits)
            for a, s in zip(attns, saved):
                a.scaling = s
            assert delta > 1e-3, f"{name}: mscale_all_dim does not change the softmax scale ({delta})"
            rot = model.model.rotary_emb
            assert abs(rot.attention_scaling - 1.0) > 1e-3, f"{name}: yarn attention factor is 1"
        if flags.get("rotate_half"):
            model.config.rope_interleave = True
            delta = _max_diff(_logits(model, ids), logits)
            model.config.rope_interleave = False
            assert delta > 1e-3, f"{name}: rope_interleave has no effect ({delta})"
        assert _max_diff(_logits(model, ids), logits) == 0.0, f"{name}: forward is not deterministic"

    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        saved_names = set(f.keys())
    grad_names = {k[len("grad."):] for k in ref if k.startswith("grad.")}
    assert saved_names == grad_names, f"{name}: saved {sorted(saved_names ^ grad_names)} mismatch"

    tmp = os.path.join(folder, f"reference.safetensors.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in ref.items()}, tmp, metadata={"case": name, "dtype": "float32"})
    os.replace(tmp, os.path.join(folder, "reference.safetensors"))


def main(out_dir: str, assets_dir: str) -> None:
    root = os.path.join(out_dir, "deepseek")
    stamp = make_stamp(__file__, CASES_VERSION)
    if up_to_date(root, stamp):
        return

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    cases = case_table()
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    for seed, (name, (cfg_kwargs, flags)) in enumerate(sorted(cases.items())):
        make_case(os.path.join(root, name), name, cfg_kwargs, flags, seed=2000 + seed)
    write_stamp(root, stamp, cases)
