"""Gateway settings: upstreams, stores, tenants (API keys stored as SHA-256 hashes) and cache policies."""

from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from tokenyard.gateway.router import DEFAULT_MAX_OUTSTANDING, DEFAULT_MAX_QUEUED, DEFAULT_MAX_WAIT_SECONDS

# Prompts about the asker or about the moment have answers that do not carry over to someone else's near-identical
# prompt, so by default they never take (or give) a semantic hit.
DEFAULT_BYPASS_PATTERNS = [
    r"\b(today|tonight|tomorrow|yesterday|now|nowadays|currently|current|latest|recent|recently|upcoming)\b",
    r"\b(this|next|last) (morning|evening|night|week|weekend|month|quarter|year|season)\b",
    r"\b(weather|forecast|news|headlines|stock price|exchange rate|score)\b",
    r"\b(my|mine|myself|our|ours)\b",
]


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
    semantic: bool = Field(default=True, description="used when a vector store is configured")
    semantic_threshold: float = Field(default=0.95, gt=0, le=1, description="cosine similarity needed for a hit")
    semantic_reworded_threshold: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="the similarity needed when the prompts' content words differ (a rewording, not just case, "
        "punctuation or filler): where an embedder's similarity is least to be trusted",
    )
    semantic_ttl_seconds: int = Field(default=86400, ge=1)
    bypass_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BYPASS_PATTERNS),
        description="case-insensitive regular expressions; a last user turn matching one skips the semantic cache",
    )
    cache_sampled: bool = Field(default=False, description="also cache requests with temperature > 0 and no seed")
    cost_per_1k_tokens: float = Field(default=0.0, ge=0, description="for the 'estimated cost saved' metric")

    @model_validator(mode="after")
    def _reworded_is_stricter(self) -> CachePolicy:
        if self.semantic_reworded_threshold < self.semantic_threshold:
            raise ValueError(
                f"semantic_reworded_threshold ({self.semantic_reworded_threshold}) must be at least "
                f"semantic_threshold ({self.semantic_threshold})"
            )
        return self

    @field_validator("bypass_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"bypass pattern {pattern!r} is not a valid regular expression: {error}") from None
        return patterns

    @cached_property
    def bypass(self) -> re.Pattern[str] | None:
        if not self.bypass_patterns:
            return None
        return re.compile("|".join(f"(?:{p})" for p in self.bypass_patterns), re.IGNORECASE)


class CacheRule(BaseModel):
    """Overrides of the default policy for the models and routes that match (glob patterns); first match wins."""

    model_config = ConfigDict(extra="forbid")

    model: str = "*"
    route: str = "*"
    policy: dict[str, Any] = Field(description="CachePolicy fields to change")


class Embeddings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="an OpenAI-compatible /v1/embeddings base URL; local if unset")
    model: str = "all-MiniLM-L6-v2"
    timeout_seconds: float = Field(default=0.5, gt=0)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstreams: list[str] = Field(default_factory=list)
    redis_url: str | None = None
    database_url: str | None = Field(default=None, description="PostgreSQL with pgvector, for the semantic cache")
    local_cache: bool = Field(
        default=False, description="without Redis and PostgreSQL, keep both caches in this process (local mode)"
    )
    embeddings: Embeddings = Field(default_factory=Embeddings)
    tenants: list[Tenant] = Field(default_factory=list)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    cache_rules: list[CacheRule] = Field(default_factory=list)
    store_timeout_seconds: float = Field(default=0.05, gt=0, description="a store slower than this is skipped")
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    first_byte_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a stream's longest silence; a whole answer also gets seconds_per_output_token per max_tokens",
    )
    seconds_per_output_token: float = Field(
        default=0.1,
        ge=0,
        description="time a non-streamed answer gets per requested output token, on top of first_byte_timeout_seconds "
        "(its first byte is its last: it cannot be judged by its gaps)",
    )
    assumed_max_tokens: int = Field(
        default=4096, ge=1, description="the output length a request without max_tokens is given time for"
    )
    max_outstanding_per_replica: int = Field(
        default=DEFAULT_MAX_OUTSTANDING, ge=1, description="requests this gateway sends one replica at once"
    )
    max_queued_requests: int = Field(
        default=DEFAULT_MAX_QUEUED,
        ge=0,
        description="requests that may wait for a busy deployment's replicas; more are shed with 429",
    )
    max_queue_wait_seconds: float = Field(
        default=DEFAULT_MAX_WAIT_SECONDS, gt=0, description="the longest such a wait; then 429 with Retry-After"
    )
    upstream_api_key: SecretStr | None = Field(
        default=None,
        description="sent to the replicas as `Authorization: Bearer`; from --upstream-api-key or "
        "TOKENYARD_UPSTREAM_API_KEY (keep it out of the YAML file)",
        exclude=True,
    )
    discovery: Literal["static", "kubernetes"] = "static"
    namespaces: list[str] | None = Field(default=None, description="where to watch EndpointSlices; None: all")
    _rule_policies: list[tuple[CacheRule, CachePolicy]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _rules_are_valid_policies(self) -> GatewayConfig:
        self._rule_policies = [
            (rule, CachePolicy.model_validate({**self.cache.model_dump(), **rule.policy})) for rule in self.cache_rules
        ]
        return self

    @property
    def open_access(self) -> bool:
        return not self.tenants

    @property
    def semantic_enabled(self) -> bool:
        return bool(self.database_url or self.local_cache)

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        digest = hash_api_key(api_key)
        return next((t for t in self.tenants if digest in t.api_key_sha256), None)

    def policy(self, model: str, route: str) -> CachePolicy:
        for rule, policy in self._rule_policies:
            if fnmatchcase(model, rule.model) and fnmatchcase(route, rule.route):
                return policy
        return self.cache


# The labels an LLMDeployment's Service carries (the operator writes them; EndpointSlices copy them to us).
EXACT_LABEL = "tokenyard.dev/exact-cache"
SEMANTIC_LABEL = "tokenyard.dev/semantic-cache"
THRESHOLD_LABEL = "tokenyard.dev/semantic-threshold"
TTL_LABEL = "tokenyard.dev/semantic-ttl-seconds"


def deployment_policy(policy: CachePolicy, labels: dict[str, str]) -> CachePolicy:
    """The policy with what the deployment's own spec asks for (spec.gateway) on top. A label that does not parse
    is ignored, keeping the gateway's setting: a bad label must not turn caching off or on by accident."""
    changes: dict[str, Any] = {}
    for label, field in ((EXACT_LABEL, "exact"), (SEMANTIC_LABEL, "semantic")):
        if labels.get(label) in ("true", "false"):
            changes[field] = labels[label] == "true"
    threshold, ttl = _number(labels.get(THRESHOLD_LABEL), float), _number(labels.get(TTL_LABEL), int)
    if threshold is not None and 0 < threshold <= 1:
        changes["semantic_threshold"] = threshold
        changes["semantic_reworded_threshold"] = max(policy.semantic_reworded_threshold, threshold)
    if ttl is not None and ttl >= 1:
        changes["semantic_ttl_seconds"] = ttl
    return policy.model_copy(update=changes) if changes else policy


def _number(text: str | None, kind: type[int] | type[float]) -> int | float | None:
    try:
        return kind(text) if text is not None else None
    except ValueError:
        return None


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def load_config(path: Path | None, **overrides: object) -> GatewayConfig:
    raw = yaml.safe_load(path.read_text()) if path else {}
    raw = raw or {}
    for key, value in overrides.items():
        if value not in (None, [], ()):
            raw[key] = value
    return GatewayConfig.model_validate(raw)
