"""The experiment document: the validated models every plane shares.

An `Experiment` is the JSON document stored in Redis, served by the admin API and written in the
config file (docs/admin.md lists its fields). The data plane compiles a set of them into a
routing table (router/dataplane/routing.py).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analysis.types import BUILTIN_SIGNALS, Policy
from router.signals.redact import check_pattern

Arm = Literal["control", "treatment"]
State = Literal["draft", "running", "paused", "promoted", "rolled_back"]
MissingUnitPolicy = Literal["control", "random", "reject"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SIGNAL_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_SIGNALS = 32  # custom signals per experiment (names: 1-40 characters, `_SIGNAL_RE`)


API_KEY_SET = "set"  # how the admin API shows a stored key; a write with it keeps the key


def _check_header_value(value: object) -> object:
    """A configured value that the gateway sends upstream in a header (`api_key`): printable
    ASCII, no spaces. A CR or LF would end the header and let the value write its own headers
    (or a whole request) into the upstream connection. The message never quotes the value."""
    if isinstance(value, str) and any(not "!" <= c <= "~" for c in value):
        raise ValueError(
            "api_key must be printable ASCII without spaces or control characters (CR, LF...): "
            "it is sent upstream in the Authorization header"
        )
    return value


def _check_base_url(value: object) -> object:
    if not isinstance(value, str):
        return value  # the type check reports it
    if any(c < " " or c == "\x7f" for c in value):
        raise ValueError("base_url must not contain control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not carry a query or fragment, got {value!r}")
    return value.rstrip("/")


_URL_PATTERN = r"^https?://[^\s/?#]+[^\s?#]*$"


class Target(BaseModel):
    """Where one arm's requests go: one or more OpenAI-compatible base URLs (replicas of the same
    server) and the upstream model name."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    base_url: str | None = Field(default=None, pattern=_URL_PATTERN, max_length=2000)
    base_urls: list[str] = Field(
        default_factory=list, max_length=64, description="Replicas; balanced, health-checked"
    )
    model: str = Field(min_length=1)
    api_key: str | None = Field(default=None, description="Sent upstream instead of the client's")
    prompt_price_per_million: float = Field(default=0.0, ge=0)
    completion_price_per_million: float = Field(default=0.0, ge=0)
    connect_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(default=None, gt=0)
    health_path: str | None = Field(
        default="/health",
        pattern=r"^/[^\s#]*$",
        max_length=2000,
        description="Checked on each replica, from its base URL without a trailing /v1 "
        "(vLLM's /health by default); 404 or 405 there falls back to GET <base_url>/models, "
        "then to outlier detection on real traffic; null switches active checks off",
    )

    _v_url = field_validator("base_url", mode="before")(
        classmethod(lambda cls, v: v if v is None else _check_base_url(v))
    )
    _v_key = field_validator("api_key", mode="before")(
        classmethod(lambda cls, v: _check_header_value(v))
    )

    @field_validator("base_urls", mode="before")
    @classmethod
    def _v_urls(cls, v: object) -> object:
        return [_check_base_url(u) for u in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _some_url(self) -> Target:
        if not self.base_url and not self.base_urls:
            raise ValueError("base_url or base_urls is required")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's base URL, in order, without duplicates."""
        first = [self.base_url] if self.base_url else []
        return tuple(dict.fromkeys([*first, *self.base_urls]))

    @property
    def origins(self) -> frozenset[str]:
        """``scheme://host:port`` of every replica: where the `api_key` is sent."""
        return frozenset(_origin(u) for u in self.urls)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def key_follows_to(before: Target, after: Target) -> frozenset[str]:
    """The origins `after` sends a key to that `before` did not: a key kept without being sent
    again must not follow a target to another host."""
    return after.origins - before.origins


class DefaultUpstream(BaseModel):
    """Where requests for a model that matches no route alias go (unchanged)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    base_url: str = Field(pattern=r"^https?://[^\s/?#]+[^\s?#]*$", max_length=2000)
    api_key: str | None = None

    _v_url = field_validator("base_url", mode="before")(
        classmethod(lambda cls, v: _check_base_url(v))
    )
    _v_key = field_validator("api_key", mode="before")(
        classmethod(lambda cls, v: _check_header_value(v))
    )


class CircuitBreaker(BaseModel):
    """Trips when, among the last `window` treatment requests that one gateway instance sent, at
    least `min_errors` failed and the failed share is at least `error_ratio`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    window: int = Field(default=40, ge=1, le=10_000)
    min_errors: int = Field(default=20, ge=1)
    error_ratio: float = Field(default=0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _fits(self) -> CircuitBreaker:
        if self.min_errors > self.window:
            raise ValueError("min_errors cannot exceed window")
        return self


class Capture(BaseModel):
    """Opt-in capture of sampled requests with their responses, for the data flywheel.

    Off unless an experiment sets it. Prompts and completions are redacted before they are
    stored; nothing else in the gateway logs them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rate: float = Field(gt=0, le=1, description="Share of the experiment's requests captured")
    redact: list[str] = Field(
        default_factory=lambda: ["emails", "phone_numbers", "credit_cards"],
        max_length=50,
        description="Built-ins (emails, phone_numbers, credit_cards) or regular expressions",
    )
    max_items: int = Field(default=10_000, ge=1, le=1_000_000, description="Newest kept")
    retention_days: float = Field(default=30.0, gt=0, le=365)

    @field_validator("redact")
    @classmethod
    def _v_redact(cls, v: list[str]) -> list[str]:
        return [check_pattern(item) for item in v]


class Experiment(BaseModel):
    """One A/B experiment on one route alias."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    route: str = Field(min_length=1, max_length=200)
    control: Target
    treatment: Target
    treatment_percent: float = Field(ge=0, le=100)
    state: State = "running"
    salt: str | None = Field(default=None, description="Hash salt; default: the name")
    unit_id_headers: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Header names tried in order; default: the gateway's setting",
    )
    use_body_user: bool = Field(default=True, description="Fall back to the body's `user` field")
    missing_unit_policy: MissingUnitPolicy = "control"
    overrides: dict[str, Arm] = Field(default_factory=dict)
    description: str = ""
    signals: list[str] = Field(
        default_factory=list,
        description="Custom feedback signals accepted besides the built-in ones",
    )
    detect_regenerations: bool = Field(
        default=True, description="Count a repeated prompt of the same unit as `regenerated`"
    )
    regeneration_window_seconds: float = Field(default=120.0, gt=0, le=86400)
    feedback_window_seconds: int | None = Field(
        default=None, gt=0, le=90 * 86400, description="Default: ABGATE_FEEDBACK_WINDOW_SECONDS"
    )
    policy: Policy = Field(default_factory=Policy, description="What the controller does")
    fallback_to_control: bool = Field(
        default=True,
        description="Serve a request from control when treatment fails before any byte is sent",
    )
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    ramp_steps: list[float] = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0],
        min_length=1,
        description="Shares (percent) that `advance` walks through, increasing, ending at 100",
    )
    capture: Capture | None = Field(
        default=None, description="Capture sampled requests and responses (off by default)"
    )
    requires_eval_report: bool = Field(
        default=False,
        description="Refuse to start unless a passing offline eval report is registered for "
        "the treatment's model",
    )
    # Bookkeeping, maintained by the store (not by clients):
    version: int = Field(default=0, ge=0, description="Bumped on every change (ETag)")
    state_reason: str = Field(default="", description="Why the last state change happened")
    updated_at: float = Field(default=0.0, ge=0)
    resumed_at: float = Field(
        default=0.0,
        ge=0,
        description="When the experiment was last resumed (the controller "
        "starts a new ramp step then)",
    )
    period: int = Field(
        default=0,
        ge=0,
        description="Bumped by the store whenever the treatment share or target changes or the "
        "experiment is resumed; events carry it, and the sums are kept per period",
    )
    target_period: int = Field(
        default=0,
        ge=0,
        description="The period in which the current treatment model started (set by the "
        "store): the tests judge that model on the periods since, never a former adapter's",
    )

    @field_validator("signals")
    @classmethod
    def _v_signals(cls, v: list[str]) -> list[str]:
        # each name is a field of the per-arm totals, the unit totals and the sums over units
        if len(v) > MAX_SIGNALS:
            raise ValueError(f"at most {MAX_SIGNALS} custom signals, got {len(v)}")
        for s in v:
            if not _SIGNAL_RE.match(s):
                raise ValueError(
                    f"signal names are 1-40 lowercase letters, digits or '_', got {s!r}"
                )
            if s in BUILTIN_SIGNALS:
                raise ValueError(f"{s!r} is a built-in signal; list only custom ones")
        if len(set(v)) != len(v):
            raise ValueError("signals are listed twice")
        return v

    @field_validator("ramp_steps")
    @classmethod
    def _v_steps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("ramp_steps must list at least one share")
        if any(not 0 < s <= 100 for s in v):
            raise ValueError("every ramp step must be a percentage in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("ramp_steps must increase strictly")
        return v

    @field_validator("name", mode="before")
    @classmethod
    def _v_name(cls, v: object) -> object:
        if isinstance(v, str) and not _NAME_RE.match(v):
            raise ValueError(
                "name must be 1-100 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {v!r}"
            )
        return v

    @field_validator("salt")
    @classmethod
    def _v_salt(cls, v: str | None) -> str | None:
        if v is not None and (not v or "\x00" in v):
            raise ValueError("salt must be a non-empty string without NUL characters")
        return v

    @field_validator("treatment_percent")
    @classmethod
    def _v_percent(cls, v: float) -> float:
        if round(v * 100) != round(v * 100, 6):
            raise ValueError("treatment_percent has a resolution of 0.01 (one basis point)")
        return v

    @field_validator("unit_id_headers")
    @classmethod
    def _v_headers(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        cleaned = [h.strip().lower() for h in v if h.strip()]
        if not cleaned:
            raise ValueError("unit_id_headers must name at least one header")
        return cleaned

    @property
    def treatment_bps(self) -> int:
        """The configured share in basis points (0-10000)."""
        return round(self.treatment_percent * 100)

    @property
    def effective_bps(self) -> int:
        """The share that the gateway applies in the experiment's current state."""
        if self.state == "promoted":
            return 10_000
        if self.state in ("rolled_back", "draft"):
            return 0
        return self.treatment_bps

    @property
    def hash_salt(self) -> str:
        return self.salt if self.salt is not None else self.name


BOOKKEEPING = frozenset({"version", "state_reason", "updated_at", "resumed_at", "period",
                         "target_period"})  # fmt: skip


def differing_fields(a: Experiment, b: Experiment) -> list[str]:
    """Names of the fields (bookkeeping aside) in which two experiments differ."""
    da, db = a.model_dump(), b.model_dump()
    return sorted(k for k in da if k not in BOOKKEEPING and da[k] != db.get(k))


LIVE_STATES = frozenset({"draft", "running", "paused"})


class ConfigFile(BaseModel):
    """The YAML file of `abgate serve --config`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    experiments: list[Experiment] = Field(default_factory=list)
    default_upstream: DefaultUpstream | None = None

    @model_validator(mode="after")
    def _unique(self) -> ConfigFile:
        check_unique(self.experiments)
        keys = [self.default_upstream.api_key if self.default_upstream else None]
        keys += [t.api_key for e in self.experiments for t in (e.control, e.treatment)]
        if API_KEY_SET in keys:
            raise ValueError(
                f'api_key "{API_KEY_SET}" is how the admin API shows a stored key; '
                "write the key itself in the config file"
            )
        return self


def check_unique(experiments: list[Experiment]) -> None:
    """Names are unique; at most one live (non-final) experiment per route."""
    names: set[str] = set()
    routes: dict[str, str] = {}
    for exp in experiments:
        if exp.name in names:
            raise ValueError(f"duplicate experiment name {exp.name!r}")
        names.add(exp.name)
        if exp.state in LIVE_STATES:
            other = routes.get(exp.route)
            if other is not None:
                raise ValueError(
                    f"experiments {other!r} and {exp.name!r} are both live on route {exp.route!r}"
                )
            routes[exp.route] = exp.name


def experiment_from_json(data: bytes | str | dict[str, Any]) -> Experiment:
    if isinstance(data, dict):
        return Experiment.model_validate(data)
    return Experiment.model_validate_json(data)
