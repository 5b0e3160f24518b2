"""Reference for the embedded default model (SmolLM2-135M-Instruct GGUF Q4_1) computed by transformers'
own GGUF loader (which dequantises and un-permutes independently of us): logits of one short document and
the mean NLL of the first 40 TinyStories paragraphs (BOS + text, 256 tokens max), read by
tests/torch/default_model_test.cpp. Skips when the model or the text is absent."""
import json
import os

from default_model import NAME, find_default_model


def paragraphs(path: str, n: int) -> list[str]:
    docs, cur = [], []
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line.strip() == "":
            if cur:
                docs.append("\n".join(cur))
                cur = []
        else:
            cur.append(line.rstrip("\r"))
    if cur:
        docs.append("\n".join(cur))
    return docs[:n]


def main(out_dir: str, assets_dir: str) -> None:
    model_path = find_default_model()
    text = os.path.join(assets_dir, "text", "tinystories_val_part1.txt")
    if model_path is None or not os.path.exists(text):
        print("refs_smollm2: default model or text absent, skipping", flush=True)
        return
    folder = os.path.join(out_dir, "smollm2")
    stamp = os.path.join(folder, "reference.json")
    if os.path.exists(stamp) and json.load(open(stamp)).get("model") == model_path:
        return
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.makedirs(folder, exist_ok=True)
    d, f = os.path.dirname(model_path), os.path.basename(model_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    docs = paragraphs(text, 40)
    total, count = 0.0, 0
    first = None
    with torch.no_grad():
        for doc in docs:
            ids = ([1] + tok.encode(doc, add_special_tokens=False))[:256]
            x = torch.tensor([ids])
            logits = model(x).logits[0]
            if first is None:
                first = {"input_ids": x[:, :32].contiguous(), "logits": logits[:32].contiguous()}
            lp = torch.log_softmax(logits[:-1].double(), -1)
            total += -lp.gather(1, x[0, 1:, None]).sum().item()
            count += len(ids) - 1
    save_file(first, os.path.join(folder, "logits.safetensors"))
    json.dump({"model": model_path, "name": NAME, "documents": len(docs), "tokens": count,
               "mean_nll": total / count}, open(stamp, "w"), indent=1)
