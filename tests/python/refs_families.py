"""Numerical-parity references for every supported decoder family (read by tests/torch/family_parity_test.cpp).

For each case a tiny random model is built with transformers (seeded, eager attention so the reference is
the plain textbook maths), saved with save_pretrained to out_dir/families/<case>/, and its reference
inputs/outputs are written to out_dir/families/<case>/reference.safetensors:

  input_ids            (B, T) int64
  logits               (B, T, V) float32: transformers' logits for input_ids
  probe                (B, T, V) float32: fixed random P; loss = (logits * P).sum()
  grad.<hf name>       float32: d loss / d parameter, under the names the checkpoint is saved with
  aux_loss             () float32 (MoE only): transformers' router load-balancing loss (unscaled)
  aux_grad.<hf name>   float32 (MoE only): d aux_loss / d router weight
  logits_fp32          (bf16 case only): the same bf16 weights run in float32, to size the bf16 noise
  grad_fp32.<hf name>  (bf16 case only): likewise for the gradients
  packed.input_ids     (1, T) two documents packed in one row
  packed.position_ids  (1, T) positions restarting at 0 for the second document
  packed.segment_ids   (1, T) 0 for the first document, 1 for the second
  packed.doc0_logits   (1, T0, V) the first document run on its own
  packed.doc1_logits   (1, T1, V) the second document run on its own
  padded.input_ids     (B, T) row 0 left-padded (PAD_LEFT pad tokens), row 1 full
  padded.attention_mask (B, T) int64, 0 on padding
  padded.position_ids  (B, T) positions counting real tokens only
  padded.logits        (B, T, V) transformers' logits with that mask (padding positions are meaningless)

Weights are re-drawn with unit-scale statistics (the transformers initialiser gives near-zero logits that
would make any tolerance meaningless), and each case checks that the feature it exists for (sliding
window, soft-capping, dynamic NTK) really changes transformers' output, so a silently ignored config
field cannot make a case pass vacuously.
"""
from ref_stamp import make_stamp, up_to_date, write_stamp
import copy
import json
import math
import os
import shutil

import torch

CASES_VERSION = 1  # part of the up-to-date stamp (the generator's own text is too)

BATCH, SEQ = 2, 24
DOC_LENGTHS = (10, 14)  # packed row = doc0 + doc1, SEQ tokens in all
PAD_LEFT = 6  # left padding of row 0 in the padded-batch reference


def _base(**kw):
    d = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             rms_norm_eps=1e-5, tie_word_embeddings=False)
    d.update(kw)
    return d


def _rope(rope_type="default", theta=10000.0, **kw):
    r = {"rope_type": rope_type, "rope_theta": theta}
    r.update(kw)
    return r


def case_table():
    from transformers import (Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    L = (LlamaConfig, LlamaForCausalLM)
    return {
        "llama": (L, _base(rope_parameters=_rope()), {}),
        "llama_mha": (L, _base(num_key_value_heads=4, rope_parameters=_rope(theta=500.0)), {}),
        "llama_tied": (L, _base(tie_word_embeddings=True, num_hidden_layers=2, rope_parameters=_rope()), {}),
        "llama_linear": (L, _base(rope_parameters=_rope("linear", factor=2.0)), {}),
        # max_position_embeddings < SEQ so dynamic NTK rescales the base.
        "llama_dynamic": (L, _base(max_position_embeddings=16, rope_parameters=_rope("dynamic", factor=2.0)),
                          {"dynamic": True}),
        "llama_yarn": (L, _base(max_position_embeddings=1024,
                                rope_parameters=_rope("yarn", factor=4.0, original_max_position_embeddings=256)), {}),
        "llama_llama3": (L, _base(max_position_embeddings=256,
                                  rope_parameters=_rope("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                        original_max_position_embeddings=64)), {}),
        "llama_bias": (L, _base(attention_bias=True, mlp_bias=True, rope_parameters=_rope()), {}),
        "qwen2": ((Qwen2Config, Qwen2ForCausalLM), _base(rope_parameters=_rope(theta=1000000.0)), {}),
        "qwen2_sliding": ((Qwen2Config, Qwen2ForCausalLM),
                          _base(use_sliding_window=True, sliding_window=8, max_window_layers=1,
                                rope_parameters=_rope()), {"sliding": True}),
        "mistral": ((MistralConfig, MistralForCausalLM),
                    _base(sliding_window=8, head_dim=16, rope_parameters=_rope()), {"sliding": True}),
        "mixtral": ((MixtralConfig, MixtralForCausalLM),
                    _base(num_local_experts=4, num_experts_per_tok=2, sliding_window=8, intermediate_size=40,
                          router_aux_loss_coef=0.02, output_router_logits=True, rope_parameters=_rope()),
                    {"sliding": True, "moe": True}),
        # head_dim (24) != hidden / heads (12); query_pre_attn_scalar (16) != head_dim; small soft-caps so
        # tanh is far from linear; window 6 < SEQ so the alternating local layers (0, 2) differ.
        "gemma2": ((Gemma2Config, Gemma2ForCausalLM),
                   _base(num_hidden_layers=4, head_dim=24, query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
                         final_logit_softcapping=4.0, sliding_window=6, hidden_activation="gelu_pytorch_tanh",
                         tie_word_embeddings=True, rope_parameters=_rope()),
                   {"sliding": True, "softcap": True}),
        "llama_bf16": (L, _base(rope_parameters=_rope()), {"bf16": True}),
    }


def _reinit(model, gen, gemma, tied):
    """Unit-scale random weights: activations O(1), logits O(1..5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = torch.randn(p.shape, generator=gen) * 0.2
                p.copy_(v if gemma else 1.0 + v)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif "embed_tokens" in name:
                # A tied embedding is also the LM head: scale it like one so logits stay O(1) (Gemma2
                # multiplies the embeddings by sqrt(hidden) on the way in).
                scale = 1.0 / math.sqrt(p.shape[-1]) if tied else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def _saved_name_grads(model, config, grads):
    """Runtime parameter names -> the names save_pretrained writes (transformers 5 fuses Mixtral experts
    at run time and un-fuses them on save)."""
    out = {}
    for name, g in grads.items():
        if ".mlp.experts.gate_up_proj" in name:
            prefix = name.replace(".mlp.experts.gate_up_proj", ".block_sparse_moe.experts.")
            inter = config.intermediate_size
            for e in range(g.shape[0]):
                out[f"{prefix}{e}.w1.weight"] = g[e, :inter]
                out[f"{prefix}{e}.w3.weight"] = g[e, inter:]
        elif ".mlp.experts.down_proj" in name:
            prefix = name.replace(".mlp.experts.down_proj", ".block_sparse_moe.experts.")
            for e in range(g.shape[0]):
                out[f"{prefix}{e}.w2.weight"] = g[e]
        elif ".mlp.gate.weight" in name and getattr(config, "num_local_experts", 0):
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = g
        else:
            out[name] = g
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def _logits(model, ids, **kw):
    return model(input_ids=ids, use_cache=False, **kw).logits


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def make_case(folder, name, classes, cfg_kwargs, flags, seed):
    from safetensors import safe_open
    from safetensors.torch import save_file

    config_cls, model_cls = classes
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = config_cls(**cfg_kwargs)
    config._attn_implementation = "eager"
    model = model_cls(config)
    assert model.config._attn_implementation == "eager", name
    _reinit(model, gen, gemma=config.model_type == "gemma2", tied=config.tie_word_embeddings)
    bf16 = flags.get("bf16", False)
    if bf16:
        model = model.to(torch.bfloat16)
    model.eval()  # no dropout; gradients still flow
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)

    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    out = model(input_ids=ids, use_cache=False, output_router_logits=flags.get("moe", False) or None)
    logits = out.logits
    probe = torch.randn(logits.shape, generator=gen)
    loss = (logits.float() * probe).sum()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=flags.get("moe", False))
    ref = {
        "input_ids": ids,
        "logits": logits.detach().float().contiguous(),
        "probe": probe,
    }
    for k, g in _saved_name_grads(model, config, dict(zip(params.keys(), grads))).items():
        ref["grad." + k] = g

    if flags.get("moe"):
        aux = out.aux_loss
        assert aux is not None and aux.numel() == 1, "transformers returned no router aux loss"
        ref["aux_loss"] = aux.detach().float().reshape(())
        gate_names = [n for n in params if n.endswith(".mlp.gate.weight")]
        aux_grads = torch.autograd.grad(aux, [params[n] for n in gate_names])
        for k, g in _saved_name_grads(model, config, dict(zip(gate_names, aux_grads))).items():
            ref["aux_grad." + k] = g

    if bf16:
        # The same bf16 weights run in float32: how far bf16 arithmetic alone moves logits and gradients.
        m32 = copy.deepcopy(model).float()
        p32 = dict(m32.named_parameters())
        logits32 = _logits(m32, ids)
        g32 = torch.autograd.grad((logits32 * probe).sum(), list(p32.values()))
        ref["logits_fp32"] = logits32.detach().contiguous()
        for k, g in _saved_name_grads(m32, config, dict(zip(p32.keys(), g32))).items():
            ref["grad_fp32." + k] = g

    with torch.no_grad():
        # Guard against a config field transformers silently ignores: the feature must change the output.
        if flags.get("sliding"):
            saved = model.config.sliding_window
            model.config.sliding_window = 10**6
            delta = _max_diff(_logits(model, ids), logits)
            model.config.sliding_window = saved
            assert delta > 1e-3, f"{name}: sliding window has no effect in transformers ({delta})"
        if flags.get("softcap"):
            attns = [layer.self_attn for layer in model.model.layers]
            saved = [a.attn_logit_softcapping for a in attns]
            for a in attns:
                a.attn_logit_softcapping = None
            delta = _max_diff(_logits(model, ids), logits)
            for a, s in zip(attns, saved):
                a.attn_logit_softcapping = s
            assert delta > 1e-3, f"{name}: attention soft-capping has no effect ({delta})"
        if flags.get("dynamic"):
            rot = model.model.rotary_emb
            assert not torch.equal(rot.inv_freq, rot.original_inv_freq), f"{name}: dynamic NTK did not kick in"
        assert _max_diff(_logits(model, ids), logits) == 0.0, f"{name}: forward is not deterministic"

        if not bf16:
            # Two documents in one row; transformers (no cache, no attention mask) derives the document
            # boundaries from the restarting position_ids, which must agree with running each alone.
            n0, n1 = DOC_LENGTHS
            packed = torch.randint(0, vocab, (1, n0 + n1), generator=gen)
            pos = torch.cat([torch.arange(n0), torch.arange(n1)]).unsqueeze(0)
            seg = torch.cat([torch.zeros(n0, dtype=torch.int64), torch.ones(n1, dtype=torch.int64)]).unsqueeze(0)
            doc0 = _logits(model, packed[:, :n0])
            doc1 = _logits(model, packed[:, n0:])
            hf_packed = _logits(model, packed, position_ids=pos)
            err = max(_max_diff(hf_packed[:, :n0], doc0), _max_diff(hf_packed[:, n0:], doc1))
            assert err < 1e-4, f"{name}: transformers' packed forward differs from separate documents ({err})"
            ref.update({"packed.input_ids": packed, "packed.position_ids": pos, "packed.segment_ids": seg,
                        "packed.doc0_logits": doc0.float().contiguous(),
                        "packed.doc1_logits": doc1.float().contiguous()})

            # Left padding: row 0 starts with PAD_LEFT padding tokens, masked out with attention_mask;
            # positions count only real tokens (what generate() does). Only real positions are compared.
            mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
            mask[0, :PAD_LEFT] = 0
            padded = ids.clone()
            padded[0, :PAD_LEFT] = 0
            pad_pos = (mask.cumsum(-1) - 1).clamp(min=0)
            pad_logits = model(input_ids=padded, attention_mask=mask, position_ids=pad_pos, use_cache=False).logits
            alone = _logits(model, ids[:1, PAD_LEFT:])
            err = _max_diff(pad_logits[:1, PAD_LEFT:], alone)
            assert err < 1e-4, f"{name}: transformers' left-padded row differs from the row alone ({err})"
            ref.update({"padded.input_ids": padded, "padded.attention_mask": mask, "padded.position_ids": pad_pos,
                        "padded.logits": pad_logits.float().contiguous()})

    # Sanity: the saved checkpoint holds exactly the tensors the gradients are named after.
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        saved_names = set(f.keys())
    grad_names = {k[len("grad."):] for k in ref if k.startswith("grad.")}
    assert saved_names == grad_names, f"{name}: saved {sorted(saved_names ^ grad_names)} mismatch"

    tmp = os.path.join(folder, f"reference.safetensors.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in ref.items()}, tmp,
              metadata={"case": name, "dtype": "bfloat16" if bf16 else "float32"})
    os.replace(tmp, os.path.join(folder, "reference.safetensors"))


def main(out_dir: str, assets_dir: str) -> None:
    # Regenerating takes ~10 s; skip it when this generator and the library versions are unchanged.
    root = os.path.join(out_dir, "families")
    stamp = make_stamp(__file__, CASES_VERSION)
    if up_to_date(root, stamp):
        return

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cases = case_table()
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared machine
    try:
        for seed, (name, (classes, cfg_kwargs, flags)) in enumerate(sorted(cases.items())):
            make_case(os.path.join(root, name), name, classes, cfg_kwargs, flags, seed=1000 + seed)
    finally:
        torch.set_num_threads(threads)
    write_stamp(root, stamp, cases)
