"""Process settings: one `Settings`, built once at start-up from `ABGATE_*` variables.

`os.environ` is read nowhere else in the gateway; everything below is passed down explicitly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
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
    admin_tokens: SecretStr | None = Field(
        default=None,
        description="Named admin tokens, `name:token,name2:token2`; the name of the token a "
        "call carries is its audit actor (ABGATE_ADMIN_TOKEN's is `admin`)",
    )
    admin_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /admin, /metrics and /openapi.json on this port only (same host); "
        "unset: on the data-plane port",
    )

    _ACTOR_RE: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
    # the actors the gateway and the controller write themselves: no token may pose as them
    _SYSTEM_ACTORS: ClassVar[frozenset[str]] = frozenset(
        {"controller", "circuit-breaker", "config-file", "anonymous"}
    )

    @field_validator("admin_tokens")
    @classmethod
    def _v_admin_tokens(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None:
            single = info.data.get("admin_token")
            Settings.parse_admin_tokens(value.get_secret_value(), single)
        return value

    @staticmethod
    def parse_admin_tokens(raw: str, single: SecretStr | None = None) -> dict[str, str]:
        """`name:token,...` as {name: token}; ValueError names the entry, never a token."""
        tokens: dict[str, str] = {"admin": single.get_secret_value()} if single else {}
        for index, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
            if not entry:
                continue
            name, colon, token = entry.partition(":")
            if not colon or not Settings._ACTOR_RE.match(name):
                raise ValueError(f"entry {index}: write name:token, a name of 1-64 [A-Za-z0-9._-]")
            where = f"entry {index} ({name})"
            if name in Settings._SYSTEM_ACTORS or name in tokens:
                raise ValueError(f"{where}: the name is taken (a duplicate, or a reserved actor)")
            if not token or any(not "!" <= c <= "~" for c in token):
                raise ValueError(f"{where}: the token must be printable ASCII without spaces")
            if token in tokens.values():
                raise ValueError(f"{where}: the same token is given to another name")
            tokens[name] = token
        return tokens  # an empty value: no named tokens, as when it is unset

    def admin_credentials(self) -> dict[str, str]:
        """Every accepted admin token by its actor name (`admin`: ABGATE_ADMIN_TOKEN)."""
        if self.admin_tokens is None:
            return {"admin": self.admin_token.get_secret_value()} if self.admin_token else {}
        return self.parse_admin_tokens(self.admin_tokens.get_secret_value(), self.admin_token)

    config_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_feedback_bytes: int = Field(default=1024 * 1024, gt=0)
    unit_id_headers: list[str] = Field(default_factory=lambda: ["x-user-id", "x-tenant-id"])
    max_unit_id_bytes: int = Field(
        default=256,
        gt=0,
        description="The longest unit id (a unit id header or the body's `user`, in UTF-8 "
        "bytes) of a request on an experiment's route; a longer one is refused with 400",
    )
    direct_arm_models: Literal["allow", "refuse_treatment", "refuse"] = Field(
        default="refuse_treatment",
        description="A model that is no route alias but an experiment arm's upstream model, "
        "sent to the default upstream directly, would bypass the experiment: refuse_treatment "
        "answers 404 for treatments' models (not for one that is also a control's), refuse for "
        "every arm's model, allow passes them on",
    )

    # Event writer (per request: stream entry, request index, aggregates).
    event_buffer: int = Field(default=200_000, gt=0, description="Events held while Redis is away")
    event_batch: int = Field(default=256, gt=0)
    event_linger_seconds: float = Field(
        default=0.005, ge=0, le=1, description="Wait this long for a batch to gather"
    )
    event_stream_maxlen: int = Field(default=1_000_000, gt=0)
    event_buffer_bytes: int = Field(
        default=128 * 1024 * 1024,
        gt=0,
        description="Estimated memory of the events held while Redis is away, at most (the "
        "count bound, event_buffer, is reached first by ordinary events)",
    )
    ended_retention_seconds: int = Field(
        default=30 * 86400,
        gt=0,
        description="How long an ended (promoted, rolled back) or deleted experiment's per-unit "
        "state, event stream and captures stay in Redis (at least its feedback window)",
    )
    max_units_per_arm: int = Field(
        default=1_000_000,
        gt=0,
        description="The most units (distinct unit ids) a running experiment keeps per-unit "
        "totals of in each arm, about 200 bytes each in Redis; a further unit's requests count "
        "in the arm's totals only (and in its `units_over_cap`), not in the unit-level sums",
    )
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
