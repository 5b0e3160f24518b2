"""Runs a Hugging Face causal LM folder with transformers and writes its logits as JSON.

Usage: run_hf_causal_lm.py FOLDER TOKENS_JSON OUT_JSON
TOKENS_JSON holds a list of token ids (one sequence); OUT_JSON gets {"model_class", "logits": [[...], ...]}.
Used by tests/torch/convert_test.cpp to check that converted MLA exports run in stock transformers
(DeepseekV3ForCausalLM) with the logits of mlaforge's own MLA forward.
"""
import json
import sys

import torch
import transformers


def main() -> None:
    folder, tokens_path, out_path = sys.argv[1:4]
    ids = json.load(open(tokens_path))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    json.dump({"model_class": type(model).__name__, "logits": logits.tolist()}, open(out_path, "w"))


if __name__ == "__main__":
    main()
