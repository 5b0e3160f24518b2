#!/usr/bin/env python3
"""Loads a safetensors file with the reference library and dumps it as JSON for a C++ test to check.

usage: dump_safetensors.py <file.safetensors> <out.json>
Output: {"metadata": {...}, "tensors": {name: {"dtype": "F32", "shape": [...], "values": [flat]}}}.
Float values are exact (float64 holds every F32/F16/BF16 value), so the C++ side compares with ==.
"""
import json
import sys

import torch
from safetensors import safe_open

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}


def main() -> int:
    path, out = sys.argv[1], sys.argv[2]
    result = {"tensors": {}}
    with safe_open(path, framework="pt") as f:
        result["metadata"] = f.metadata() or {}
        for name in f.keys():
            t = f.get_tensor(name)
            flat = t.reshape(-1)
            values = flat.double().tolist() if t.is_floating_point() else flat.tolist()
            result["tensors"][name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "values": values}
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
