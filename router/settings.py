"""Process settings: one `Settings`, built once at start-up from `ABGATE_*` variables.

`os.environ` is read nowhere else in the gateway; everything below is passed down explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway settings. Every field is `ABGATE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ABGATE_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis URL. Unset: a private redis-server is started for this process.",
    )
    admin_token: SecretStr | None = None
    insecure_admin: bool = Field(default=False, description="Serve /admin without a token")
    config_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_feedback_bytes: int = Field(default=1024 * 1024, gt=0)
    unit_id_headers: list[str] = Field(default_factory=lambda: ["x-user-id", "x-tenant-id"])

    # Event writer (per request: stream entry, request index, aggregates).
    event_buffer: int = Field(default=200_000, gt=0, description="Events held while Redis is away")
    event_batch: int = Field(default=256, gt=0)
    event_linger_seconds: float = Field(
        default=0.005, ge=0, le=1, description="Wait this long for a batch to gather"
    )
    event_stream_maxlen: int = Field(default=1_000_000, gt=0)
    feedback_window_seconds: int = Field(default=7 * 86400, gt=0)
    minute_retention_seconds: int = Field(default=30 * 86400, gt=0)
    shutdown_flush_seconds: float = Field(default=10.0, ge=0)

    config_poll_seconds: float = Field(default=2.0, gt=0)
    models_cache_seconds: float = Field(default=10.0, ge=0)

    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=600.0, gt=0)
    upstream_max_connections: int = Field(
        default=1000, gt=0, description="Connections per model-server replica, at most"
    )
    upstream_pool_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request waits for a free connection when a replica's "
        "upstream_max_connections are all busy; then 503 upstream_pool_exhausted",
    )
    upstream_max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="The largest non-streamed response body read from a model server; "
        "a larger one is answered 502 upstream_response_too_large",
    )
    client_write_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one write of a stream to its client may wait (a client that "
        "stopped reading); then the gateway closes that connection",
    )
    health_interval_seconds: float = Field(default=2.0, gt=0)
    outlier_max_failures: int = Field(default=3, ge=1)
    outlier_ejection_seconds: float = Field(default=5.0, gt=0)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)

    controller_tick_seconds: float = Field(default=1.0, gt=0)
    controller_lock_ttl_seconds: float = Field(default=10.0, gt=0)
    controller_metrics_port: int = Field(default=0, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="In any case: uvicorn and gunicorn spell levels lower case"
    )
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("unit_id_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        cleaned = [h.strip().lower() for h in value if h.strip()]
        if not cleaned:
            raise ValueError("at least one unit id header is required")
        return cleaned
