"""Reference safetensors file written by the real library, read back by tests/core/safetensors_test.cpp.

Writes out_dir/safetensors/py_written.safetensors. The C++ test hard-codes the same values, so change
both together.
"""
import os

import torch
from safetensors.torch import save_file


def reference_tensors() -> dict:
    return {
        "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.0,
        "f16": torch.tensor([1.0, -2.0, 0.5, 65504.0, 6.103515625e-05], dtype=torch.float16),
        "bf16": torch.tensor([[3.140625, -1.0], [0.0, 256.0]], dtype=torch.bfloat16),
        "i64": torch.tensor([-1, 0, 2**40], dtype=torch.int64),
        "scalar": torch.tensor(7.0, dtype=torch.float32),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
    }


def main(out_dir: str, assets_dir: str) -> None:
    folder = os.path.join(out_dir, "safetensors")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "py_written.safetensors")
    # Atomic: several fixtures may regenerate this file while C++ tests read it.
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file(reference_tensors(), tmp, metadata={"format": "pt", "written_by": "refs_safetensors"})
    os.replace(tmp, path)
