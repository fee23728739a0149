"""The engine pipeline: requests -> scheduler (with the KV cache manager) -> model runner."""
