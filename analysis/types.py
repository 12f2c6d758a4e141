"""The typed aggregate snapshot the analysis reads. A leaf module: no project imports.

The gateway's read model (router/signals/readmodel.py) builds an `ExperimentSnapshot` from a
few Redis keys; the statistics consume it unchanged. Unit-level sums are over randomisation
units (users or tenants) so that variances are computed at the level of randomisation:

for each per-unit total ``y_i`` of a field, ``s1[y] = Σ y_i`` and ``s2[y] = Σ y_i²``, and for
each (numerator, denominator) pair of a ratio metric ``cross[(y, n)] = Σ y_i n_i``. With
``units`` the number of units, the delta-method variance of ``Σy/Σn`` is O(1) to compute.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN_SIGNALS = ("thumbs_up", "thumbs_down", "escalation", "resolved", "regenerated")

# Per-unit fields and what they count.
REQUESTS = "requests"  # requests of the unit
ERRORS = "errors"  # failed requests (upstream errors attributable to the arm)
CLIENT_CLOSED = "client_closed"  # requests whose client went away mid-stream (not errors)
LATENCY_MS = "latency_ms"  # summed latency
TTFT_MS = "ttft_ms"  # summed time to first token (streaming requests)
TTFT_N = "ttft_n"  # streaming requests with a TTFT
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
COST_USD = "cost_usd"
VOTES = "votes"  # thumbs_up + thumbs_down

# Per-arm latency histogram (`lh:<k>` fields of the arm totals): bucket k holds latencies in
# [ratio^k, ratio^(k+1)) ms, k = floor(log(max(ms, 1)) / log(ratio)), at most LATENCY_BUCKETS_MAX
# (its bucket holds everything above 1.02^800 ms, about 2 hours): at most 801 fields per arm.
LATENCY_BUCKET_RATIO = 1.02
LATENCY_BUCKETS_MAX = 800


def signal_count(signal: str) -> str:
    """Per-unit field counting a feedback signal (distinct requests that got it)."""
    return f"fb:{signal}"


def signal_value(signal: str) -> str:
    """Per-unit field summing a feedback signal's values."""
    return f"fv:{signal}"


class UnitSums(BaseModel):
    """Sums over the units of one arm (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    units: int = 0
    moved_in: int = Field(default=0, description="Units first seen in the other arm")
    s1: dict[str, float] = Field(default_factory=dict)
    s2: dict[str, float] = Field(default_factory=dict)
    cross: dict[str, float] = Field(
        default_factory=dict, description="key 'numerator|denominator' -> Σ y_i n_i"
    )
    nonzero: dict[str, int] = Field(
        default_factory=dict,
        description="denominator field -> units whose total of it is non-zero (e.g. that voted)",
    )

    def total(self, field: str) -> float:
        return self.s1.get(field, 0.0)

    def sq(self, field: str) -> float:
        return self.s2.get(field, 0.0)

    def with_data(self, denominator: str) -> int:
        """Units with a non-zero total of `denominator` (the gateway's `nz:` aggregates; a unit
        without one contributes nothing to a ratio metric). Every unit has a request, so units
        without any `nz:` count are aggregates written before the count existed (an ended
        experiment's report): then every unit counts, as it did."""
        if not self.nonzero and self.units > 0:
            return self.units
        return self.nonzero.get(denominator, 0)

    def xy(self, numerator: str, denominator: str) -> float:
        if numerator == denominator:
            return self.sq(numerator)
        return self.cross.get(f"{numerator}|{denominator}", 0.0)


class ArmTotals(BaseModel):
    """Request-level totals of one arm (every request, with or without a unit id)."""

    model_config = ConfigDict(frozen=True)

    requests: int = 0
    errors: int = 0
    client_closed: int = Field(default=0, description="Clients that went away (not errors)")
    units_over_cap: int = Field(
        default=0,
        description="Requests of units the arm had no room to store (ABGATE_MAX_UNITS_PER_ARM): "
        "counted here, not in the unit-level sums",
    )
    status_2xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_sq_sum: float = 0.0
    ttft_count: int = 0
    ttft_ms_sum: float = 0.0
    ttft_ms_sq_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    feedback: int = 0
    signal_counts: dict[str, int] = Field(default_factory=dict)
    signal_value_sums: dict[str, float] = Field(default_factory=dict)
    latency_histogram: dict[int, int] = Field(
        default_factory=dict,
        description="bucket -> requests whose latency fell in it (LATENCY_BUCKET_RATIO)",
    )


class MinutePoint(BaseModel):
    """Counters of one arm in one minute (for charts)."""

    model_config = ConfigDict(frozen=True)

    minute: int = Field(description="Unix time // 60")
    requests: int = 0
    errors: int = 0
    client_closed: int = 0
    latency_ms_sum: float = 0.0
    completion_tokens: int = 0
    feedback: int = 0


class ArmSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    totals: ArmTotals = Field(default_factory=ArmTotals)
    units: UnitSums = Field(default_factory=UnitSums)
    minutes: list[MinutePoint] = Field(default_factory=list)


class PeriodSums(BaseModel):
    """The unit-level sums of one period of the experiment: the span between two changes of
    its treatment share, its treatment target or a resume (router/experiments.py `period`).
    Each unit's totals count in the period in which they were made."""

    model_config = ConfigDict(frozen=True)

    period: int = Field(ge=0)
    control: UnitSums = Field(default_factory=UnitSums)
    treatment: UnitSums = Field(default_factory=UnitSums)
    control_latency: dict[int, int] = Field(
        default_factory=dict, description="Control's latency histogram in the period"
    )
    treatment_latency: dict[int, int] = Field(
        default_factory=dict, description="Treatment's latency histogram in the period"
    )


class ExperimentSnapshot(BaseModel):
    """Everything the statistics need about one experiment, read at one moment."""

    model_config = ConfigDict(frozen=True)

    experiment: str
    route: str
    treatment_percent: float
    taken_at: float
    control: ArmSnapshot = Field(default_factory=ArmSnapshot)
    treatment: ArmSnapshot = Field(default_factory=ArmSnapshot)
    signals: tuple[str, ...] = BUILTIN_SIGNALS
    period: int = Field(default=0, ge=0, description="The experiment's current period")
    since_period: int = Field(
        default=0,
        ge=0,
        description="The period in which the current treatment model started: the tests use "
        "the periods since (analysis/metrics.py `tested`)",
    )
    periods: list[PeriodSums] = Field(
        default_factory=list,
        description="Per-period sums, oldest first, for every period with data (empty: sums "
        "written before periods existed; the cumulative sums are then the only estimate)",
    )


# -- results of the statistics (analysis/stats) -------------------------------------------------

Status = Literal["ok", "insufficient_data"]
Verdict = Literal["non_inferior", "inferior", "inconclusive", "insufficient_data"]


class Estimate(BaseModel):
    """A ratio metric of one arm, Σy/Σn over units, with its delta-method variance."""

    model_config = ConfigDict(frozen=True)

    value: float
    variance: float
    units: int
    numerator: float
    denominator: float


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    low: float
    high: float


class TestResult(BaseModel):
    """A comparison of treatment with control. With `status` "insufficient_data" every number
    is None and `reason` says why; no NaN is ever returned."""

    model_config = ConfigDict(frozen=True)

    status: Status
    method: str
    reason: str = ""
    difference: float | None = None
    interval: Interval | None = None
    p_value: float | None = None
    statistic: float | None = None
    relative_lift: float | None = None
    relative_interval: Interval | None = None
    significant: bool = False
    alpha: float = 0.05


class PeriodEstimate(BaseModel):
    """Treatment − control in one period, with the weight it got in the combined estimate."""

    model_config = ConfigDict(frozen=True)

    period: int
    control: Estimate
    treatment: Estimate
    difference: float
    variance: float = Field(description="Of the difference (each arm floored as in `compare`)")
    weight: float = Field(description="Share of the inverse-variance weight, 0 when skipped")


class MetricComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    control: Estimate | None = None
    treatment: Estimate | None = None
    test: TestResult
    periods: list[PeriodEstimate] = Field(
        default_factory=list,
        description="Per-period estimates when the test combined two or more periods",
    )


class SRMResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status
    reason: str = ""
    control_units: int = 0
    treatment_units: int = 0
    expected_share: float = 0.0
    observed_share: float | None = None
    chi2: float | None = None  # the fixed-sample chi-square of old decisions (before issue 16)
    log_bayes_factor: float | None = Field(
        default=None, description="log of the always-valid test's Bayes factor (e-value)"
    )
    step: int = Field(default=1, description="The ramp step's number, which sets its alpha share")
    p_value: float | None = None
    mismatch: bool = False
    threshold: float = 0.001


class GuardrailResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    verdict: Verdict
    margin: float
    relative: bool
    higher_is_worse: bool
    test: TestResult
    reason: str = ""


class MetricLooks(BaseModel):
    """What one always-valid test keeps across looks (analysis/looks.py): its mixing scales,
    fixed at the first look with evidence, and the running minimum p-value and intersections of
    its intervals (of the difference and of the relative lift)."""

    model_config = ConfigDict(frozen=True)

    tau: float = Field(description="Mixing scale of the difference")
    relative_tau: float | None = Field(
        default=None, description="Mixing scale of the relative lift (None: control was 0)"
    )
    alpha: float = Field(default=0.05, description="The level of the intervals")
    p_value: float | None = None
    interval: Interval | None = None
    relative_interval: Interval | None = None


class LookMemory(BaseModel):
    """The controller's memory of an experiment's looks: per test (`analysis.looks.key`) what
    it keeps, for one treatment target since one resume; another target or a resume starts it
    afresh."""

    model_config = ConfigDict(frozen=True)

    target: str = Field(default="", description="The treatment's model the looks are of")
    resumed_at: float = Field(default=0.0, description="The experiment's `resumed_at` then")
    tests: dict[str, MetricLooks] = Field(default_factory=dict)


# -- policy and decisions (analysis/policy.py) ---------------------------------------------------

Action = Literal["hold", "advance", "rollback", "pause", "promote"]


class GuardrailSpec(BaseModel):
    """A metric that may not get worse by more than `margin` (absolute, or relative)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    metric: str = Field(min_length=1)
    margin: float = Field(gt=0)
    relative: bool = False


def _default_guardrails() -> list[GuardrailSpec]:
    return [
        GuardrailSpec(metric="error_rate", margin=0.01),
        GuardrailSpec(metric="latency_p95_ms", margin=0.25, relative=True),
        GuardrailSpec(metric="cost_per_request", margin=0.25, relative=True),
        GuardrailSpec(metric="escalation_rate", margin=0.02),
    ]


class Policy(BaseModel):
    """How the controller ramps, promotes and rolls back one experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    auto: bool = Field(default=True, description="The controller acts on this experiment")
    primary_metric: str = Field(default="thumbs_up_rate", min_length=1)
    higher_is_better: bool | None = Field(
        default=None, description="Direction of the primary metric; default: the catalogue's"
    )
    promote_when: Literal["better", "non_inferior"] = "better"
    non_inferiority_margin: float = Field(default=0.01, gt=0)
    guardrails: list[GuardrailSpec] = Field(default_factory=_default_guardrails)
    min_units_per_arm: int = Field(default=200, ge=2)
    min_evidence_units: int = Field(
        default=20,
        ge=2,
        description="Units per arm with data for a metric (that voted, for thumbs metrics) "
        "before its test may act: rollback as well as promotion",
    )
    min_step_seconds: float = Field(default=3600.0, ge=0)
    interval_seconds: float = Field(default=60.0, gt=0)
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="The false-action budget of an experiment without an effect; each "
        "guardrail's non-inferiority test runs at this level",
    )
    primary_alpha: float | None = Field(
        default=None,
        gt=0,
        lt=0.5,
        description="The primary metric's two-sided always-valid test (promotion and rollback "
        "share it); default alpha / 2",
    )
    srm_threshold: float = Field(default=0.001, gt=0, lt=0.5)
    srm_min_units: int = Field(default=100, ge=10)

    @model_validator(mode="after")
    def _primary_within_budget(self) -> Policy:
        if self.primary_alpha is not None and self.primary_alpha > self.alpha:
            raise ValueError(
                f"primary_alpha ({self.primary_alpha:g}) must not exceed alpha ({self.alpha:g}), "
                "the false-action budget"
            )
        return self

    @property
    def primary_level(self) -> float:
        """The level of the primary metric's two-sided test: `primary_alpha`, else α / 2
        (docs/statistics.md, "The false-action budget")."""
        return self.primary_alpha if self.primary_alpha is not None else self.alpha / 2


class StepState(BaseModel):
    """Where the experiment stands in its ramp, kept by the controller."""

    model_config = ConfigDict(frozen=True)

    share: float
    started_at: float
    control_units_at_start: int = 0
    treatment_units_at_start: int = 0
    moved_in_at_start: int = 0
    control_moved_in_at_start: int = Field(
        default=0, description="Units that had moved into control when the step started"
    )
    index: int = Field(
        default=1, ge=1, description="The step's number (1-based); SRM spends alpha over steps"
    )
    resumed_at: float = Field(
        default=0.0, description="The experiment's `resumed_at` when the step started"
    )
    period: int = Field(
        default=0, ge=0, description="The experiment's period when the step started"
    )


class Decision(BaseModel):
    """What the policy decided and why, with the numbers behind it."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reasons: list[str]
    at: float
    share: float
    primary: MetricComparison | None = None
    guardrails: list[GuardrailResult] = Field(default_factory=list)
    srm: SRMResult | None = None
    step_seconds: float = 0.0
    units: dict[str, int] = Field(default_factory=dict)
    looks: LookMemory | None = Field(
        default=None, description="The look memory after this look (the controller stores it)"
    )
