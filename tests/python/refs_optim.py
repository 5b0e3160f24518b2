"""References for the trainer's numerical core (read by tests/torch/trainer_parity_test.cpp).

Training cases, out_dir/optim/<case>/: a tiny random model saved with save_pretrained (the INITIAL weights),
train.json (hyper-parameters, the trainable parameters in the order torch saw them) and
reference.safetensors:

  input_ids.s{k}.m{j}, targets.s{k}.m{j}  (B, T) int64, step k, micro-batch j; targets[b, t] is the token
                                          to predict at position t (already shifted), -100 = not trained
  loss_sum.s{k}.m{j}   (1,) float64  sum of CE over the micro-batch's trained tokens
  loss.s{k}            (1,) float64  the step's token-mean CE (sum over micro-batches / step tokens)
  grad_norm.s{k}       (1,) float64  clip_grad_norm_'s pre-clip norm
  lr.s{k}              (1,) float64  learning rate the step used (LambdaLR)
  grad.s{k}.<hf name>  float32       accumulated gradient before clipping
  final.<hf name>      float32       weights after the last step (trainable ones)

Each step: zero_grad; for each of the 2 micro-batches: CE summed over trained tokens (F.cross_entropy,
reduction="sum", ignore_index=-100) divided by the STEP's trained-token count, backward (so gradients
accumulate to the gradient of the step's token mean); clip_grad_norm_(max_norm, foreach=False);
AdamW(foreach=False) with two groups (decay / no decay: norms, biases, the input embedding); LambdaLR with
warmup + decay (the same formula as trainer/lr_schedule.h).

Cases:
  llama_all    LlamaForCausalLM (GQA 4/2 heads), every parameter trained, cosine decay, weight decay 0.1
  mla_up_proj  DeepseekV3ForCausalLM with a query LoRA; only kv_b_proj and q_b_proj trained (the up_proj
               set), linear decay

Distillation, out_dir/optim/distill/reference.safetensors: hidden (B, T, D), head weight W (V, D),
teacher logits, targets, a non-pad mask, and for tau in {1, 2}: ce_sum, kl_trained (over trained tokens),
kl_nonpad (over the mask), each tau^2 * sum KL(teacher || student) via F.kl_div(log_target=True), and the
gradients of alpha * kl_trained / N + (1 - alpha) * ce_sum / N (alpha 0.7) with respect to hidden and W.
"""
from ref_stamp import make_stamp, up_to_date, write_stamp
import json
import math
import os
import shutil

import torch
import torch.nn.functional as F

CASES_VERSION = 1
BATCH, SEQ, MICRO = 2, 16, 2


def lr_factor(step, warmup, total, min_ratio, decay):
    """trainer/lr_schedule.h, transcribed."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    span = float(max(1, total - warmup - 1))
    p = min(max((step - warmup) / span, 0.0), 1.0)
    if decay == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def no_decay(hf_name):
    """The optimizer's group rule in Hugging Face names: biases, norms, the input embedding."""
    if hf_name.endswith(".bias") or hf_name == "model.embed_tokens.weight":
        return True
    parts = hf_name.split(".")
    return len(parts) >= 2 and parts[-2].endswith("norm")


def _reinit(model, gen):
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


def make_batch(gen, vocab, prompt_max, pad_rows):
    """Right-padded documents: a random prompt (not trained), a trained answer, padding (not trained)."""
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=gen)
    targets = torch.full((BATCH, SEQ), -100, dtype=torch.int64)
    for b in range(BATCH):
        length = SEQ - (int(torch.randint(2, 7, (1,), generator=gen)) if b in pad_rows else 0)
        ids[b, length:] = 0  # pad id
        prompt = int(torch.randint(1, prompt_max + 1, (1,), generator=gen))
        # position t predicts ids[t + 1]; train the answer part only
        for t in range(prompt - 1, length - 1):
            targets[b, t] = ids[b, t + 1]
    return ids, targets


def case_table():
    return {
        "llama_all": dict(
            family="llama",
            config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
            trainable="all", steps=6, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
            warmup=2, min_lr_ratio=0.1, decay="cosine", max_grad_norm=2.0, seed=4100),
        "mla_up_proj": dict(
            family="deepseek_v3",
            config=dict(vocab_size=80, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                        qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, n_routed_experts=0,
                        first_k_dense_replace=2, num_mtp_layers=0, max_position_embeddings=64,
                        rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            trainable="up_proj", steps=4, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
            warmup=1, min_lr_ratio=0.0, decay="linear", max_grad_norm=0.8, seed=4200),
    }


def build_model(case):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM
    if case["family"] == "llama":
        config = LlamaConfig(**case["config"])
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
    config = DeepseekV3Config(**case["config"])
    config._attn_implementation = "eager"
    return DeepseekV3ForCausalLM(config)


def is_trainable(case, hf_name):
    if case["trainable"] == "all":
        return True
    return hf_name.endswith("kv_b_proj.weight") or hf_name.endswith("q_b_proj.weight")


def make_case(folder, name, case):
    from safetensors.torch import save_file

    torch.manual_seed(case["seed"])
    gen = torch.Generator().manual_seed(case["seed"])
    model = build_model(case)
    _reinit(model, gen)
    model.train()  # no dropout in these configs; train() only to be honest about the mode
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)

    vocab = case["config"]["vocab_size"]
    params = [(n, p) for n, p in model.named_parameters()]
    for n, p in params:
        p.requires_grad_(is_trainable(case, n))
    trained = [(n, p) for n, p in params if p.requires_grad]
    assert trained, name
    decay = [p for n, p in trained if not no_decay(n)]
    nodecay = [p for n, p in trained if no_decay(n)]
    groups = [{"params": decay, "weight_decay": case["weight_decay"]}]
    if nodecay:
        groups.append({"params": nodecay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=case["lr"], betas=case["betas"], eps=case["eps"], foreach=False)
    steps = case["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, case["warmup"], steps, case["min_lr_ratio"], case["decay"]))

    ref = {}
    clipped = 0
    for k in range(steps):
        batches = [make_batch(gen, vocab, prompt_max=5, pad_rows={1} if j == 0 else {0, 1}) for j in range(MICRO)]
        step_tokens = sum(int((t != -100).sum()) for _, t in batches)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j, (ids, targets) in enumerate(batches):
            logits = model(input_ids=ids, use_cache=False).logits
            loss_sum = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), ignore_index=-100,
                                       reduction="sum")
            (loss_sum / float(step_tokens)).backward()
            ref[f"input_ids.s{k}.m{j}"] = ids
            ref[f"targets.s{k}.m{j}"] = targets
            ref[f"loss_sum.s{k}.m{j}"] = torch.tensor([loss_sum.item()], dtype=torch.float64)
            total += loss_sum.item()
        ref[f"loss.s{k}"] = torch.tensor([total / step_tokens], dtype=torch.float64)
        for n, p in trained:
            ref[f"grad.s{k}.{n}"] = p.grad.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in trained], case["max_grad_norm"], foreach=False)
        clipped += int(norm.item() > case["max_grad_norm"])
        if os.environ.get("REFS_OPTIM_DEBUG"):  # to place max_grad_norm between the steps' norms
            print(name, k, "norm", norm.item(), "loss", total / step_tokens, "tokens", step_tokens)
        ref[f"grad_norm.s{k}"] = torch.tensor([norm.item()], dtype=torch.float64)
        ref[f"lr.s{k}"] = torch.tensor([sched.get_last_lr()[0]], dtype=torch.float64)
        opt.step()
        sched.step()
    # The case must exercise clipping both ways, or the clip arithmetic is not tested.
    assert 0 < clipped < steps, f"{name}: {clipped} of {steps} steps clipped; adjust max_grad_norm"
    for n, p in trained:
        ref[f"final.{n}"] = p.detach().clone()

    meta = {k: case[k] for k in ("trainable", "steps", "lr", "betas", "eps", "weight_decay", "warmup",
                                 "min_lr_ratio", "decay", "max_grad_norm")}
    meta.update(micro_batches=MICRO, order=[n for n, _ in trained],
                no_decay=[n for n, _ in trained if no_decay(n)])
    with open(os.path.join(folder, "train.json"), "w") as f:
        json.dump(meta, f, indent=1)
    tmp = os.path.join(folder, f"reference.safetensors.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in ref.items()}, tmp, metadata={"case": name})
    os.replace(tmp, os.path.join(folder, "reference.safetensors"))


def make_distill(folder):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(4300)
    B, T, D, V = 2, 9, 16, 50
    hidden = torch.randn(B, T, D, generator=gen)
    weight = torch.randn(V, D, generator=gen) / math.sqrt(D)
    teacher = torch.randn(B, T, V, generator=gen) * 3
    targets = torch.randint(0, V, (B, T), generator=gen)
    nonpad = torch.ones(B, T, dtype=torch.bool)
    nonpad[1, 6:] = False            # padding
    targets[~nonpad] = -100
    targets[0, :3] = -100            # a prompt: not trained, but non-pad (in the KL over non-pad tokens)
    targets[:, -1] = -100            # nothing to predict after the last position
    trained = targets != -100
    alpha = 0.7
    ref = {"hidden": hidden, "weight": weight, "teacher": teacher, "targets": targets, "nonpad": nonpad,
           "alpha": torch.tensor([alpha], dtype=torch.float64)}
    for tau in (1.0, 2.0):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        logits = h @ w.t()
        ce_sum = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction="sum")
        ls = F.log_softmax(logits / tau, -1)
        lt = F.log_softmax(teacher / tau, -1)
        rows = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)  # (B, T)
        kl_trained = rows[trained].sum() * tau * tau
        kl_nonpad = rows[nonpad].sum() * tau * tau
        n = float(trained.sum())
        loss = (1 - alpha) * (ce_sum / n) + alpha * (kl_trained / n)
        loss.backward()
        tag = f"tau{int(tau)}"
        ref[f"ce_sum.{tag}"] = torch.tensor([ce_sum.item()], dtype=torch.float64)
        ref[f"kl_trained.{tag}"] = torch.tensor([kl_trained.item()], dtype=torch.float64)
        ref[f"kl_nonpad.{tag}"] = torch.tensor([kl_nonpad.item()], dtype=torch.float64)
        ref[f"grad_hidden.{tag}"] = h.grad.detach().clone()
        ref[f"grad_weight.{tag}"] = w.grad.detach().clone()
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"reference.safetensors.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in ref.items()}, tmp)
    os.replace(tmp, os.path.join(folder, "reference.safetensors"))


def main(out_dir: str, assets_dir: str) -> None:
    root = os.path.join(out_dir, "optim")
    stamp = make_stamp(__file__, CASES_VERSION)
    if up_to_date(root, stamp):
        return

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    cases = case_table()
    for name, case in sorted(cases.items()):
        make_case(os.path.join(root, name), name, case)
    make_distill(os.path.join(root, "distill"))
    write_stamp(root, stamp, list(cases) + ["distill"])
