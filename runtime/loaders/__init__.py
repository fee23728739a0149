"""Finding and loading models: a ``.gguf`` file, a Hugging Face directory, or a hub id that is already in
the local Hugging Face cache. Nothing is downloaded and no remote code runs."""

from tokenyard.runtime.loaders.resolve import ModelSource, packaged_model_path, resolve_model
from tokenyard.runtime.loaders.weights import LoadedModel, load_model

__all__ = ["LoadedModel", "ModelSource", "load_model", "packaged_model_path", "resolve_model"]
