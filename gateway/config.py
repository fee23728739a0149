"""Gateway settings: upstreams, stores, tenants (API keys stored as SHA-256 hashes) and cache policy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    api_key_sha256: list[str] = Field(min_length=1, description="hex SHA-256 of each of the tenant's API keys")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class CachePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    exact_ttl_seconds: int = Field(default=3600, ge=1)
    cache_sampled: bool = Field(default=False, description="also cache requests with temperature > 0 and no seed")
    cost_per_1k_tokens: float = Field(default=0.0, ge=0, description="for the 'estimated cost saved' metric")


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstreams: list[str] = Field(default_factory=list)
    redis_url: str | None = None
    local_cache: bool = Field(default=False, description="without Redis, keep the exact cache in this process")
    tenants: list[Tenant] = Field(default_factory=list)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    store_timeout_seconds: float = Field(default=0.05, gt=0, description="a store slower than this is skipped")
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    first_byte_timeout_seconds: float = Field(default=60.0, gt=0)

    @property
    def open_access(self) -> bool:
        return not self.tenants

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        digest = hash_api_key(api_key)
        return next((t for t in self.tenants if digest in t.api_key_sha256), None)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def load_config(path: Path | None, **overrides: object) -> GatewayConfig:
    raw = yaml.safe_load(path.read_text()) if path else {}
    raw = raw or {}
    for key, value in overrides.items():
        if value not in (None, [], ()):
            raw[key] = value
    return GatewayConfig.model_validate(raw)
