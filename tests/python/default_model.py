"""Where scripts/setup.sh puts the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1)."""
import os
import pathlib

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_default_model() -> str | None:
    """$MLAFORGE_SMOLLM2_GGUF, else $MLAFORGE_CACHE/models, else ~/.cache/mlaforge/models; None if absent."""
    candidates = []
    if os.environ.get("MLAFORGE_SMOLLM2_GGUF"):
        candidates.append(pathlib.Path(os.environ["MLAFORGE_SMOLLM2_GGUF"]))
    cache = os.environ.get("MLAFORGE_CACHE", str(pathlib.Path.home() / ".cache" / "mlaforge"))
    candidates.append(pathlib.Path(cache) / "models" / NAME)
    for p in candidates:
        if p.is_file():
            return str(p)
    return None
