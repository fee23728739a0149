"""The operator's own settings: one object, filled from `tokenyard operator`'s flags (or by a test)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenyard import __version__


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = f"ghcr.io/tokenyard/runtime-cuda:{__version__}"
    runtime_cpu_image: str = f"ghcr.io/tokenyard/runtime:{__version__}"
    drift_interval_seconds: float = 60.0  # how often every resource is reconciled again, repairing edited children
    status_interval_seconds: float = 10.0  # how often status is recomputed besides on child events
    prometheus_url: str | None = None  # for KEDA's prometheus scaler
    api_retry_base_seconds: float = 1.0  # first back-off after a failed API call; doubles up to the max
    api_retry_max_seconds: float = 60.0
