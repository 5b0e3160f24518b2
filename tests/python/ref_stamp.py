"""Skip regenerating a reference folder when neither its generator nor the library versions changed."""
import json
import os
from importlib.metadata import version

import torch


def make_stamp(generator_file: str, cases_version: int) -> dict:
    with open(generator_file, "rb") as f:
        generator_text = f.read().decode("utf-8")
    return {"version": cases_version, "transformers": version("transformers"), "torch": torch.__version__,
            "generator": generator_text}


def up_to_date(root: str, stamp: dict) -> bool:
    """True when root/stamp.json matches and every case listed there still has its reference file."""
    path = os.path.join(root, "stamp.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        old = json.load(f)
    return old.get("stamp") == stamp and all(
        os.path.exists(os.path.join(root, c, "reference.safetensors")) for c in old.get("cases", []))


def write_stamp(root: str, stamp: dict, cases) -> None:
    with open(os.path.join(root, "stamp.json"), "w") as f:
        json.dump({"stamp": stamp, "cases": sorted(cases)}, f)
