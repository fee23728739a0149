"""Model families. Every supported architecture is a llama-family decoder (Llama 2/3, Mistral,
Qwen2, SmolLM): they differ only in settings that ``LlamaConfig`` carries."""

from tokenyard.runtime.models.llama import LlamaConfig, LlamaForCausalLM

# Hugging Face ``architectures`` / GGUF ``general.architecture`` values we serve.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}

__all__ = ["SUPPORTED_ARCHITECTURES", "LlamaConfig", "LlamaForCausalLM"]
