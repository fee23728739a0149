"""tokenyard's gateway: the OpenAI-compatible front door with tenants, routing and response caching.
It never imports torch."""
