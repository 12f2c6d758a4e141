"""The read model: an experiment's aggregates from Redis as a typed `ExperimentSnapshot`.

A handful of HGETALLs (per arm: totals, unit-level sums, per-period sums, optionally the
per-minute counters), independent of how much traffic there was. The analysis consumes the
snapshot unchanged. `decode_unit_totals` reads one unit's totals as the Lua scripts store them
(router/signals/lua.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from analysis.types import (
    BUILTIN_SIGNALS,
    ArmSnapshot,
    ArmTotals,
    ExperimentSnapshot,
    MinutePoint,
    PeriodSums,
    UnitSums,
)
from router import keys
from router.experiments import Experiment

ARMS = ("control", "treatment")
_INT_TOTALS = ("requests", "errors", "client_closed", "status_2xx", "status_4xx", "status_5xx",
               "ttft_count", "prompt_tokens", "completion_tokens", "feedback",
               "units_over_cap")  # fmt: skip
_FLOAT_TOTALS = ("latency_ms_sum", "latency_ms_sq_sum", "ttft_ms_sum", "ttft_ms_sq_sum",
                 "cost_usd")  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _totals(raw: dict[bytes | str, bytes | str]) -> ArmTotals:
    data = {_text(k): _text(v) for k, v in raw.items()}
    counts = {k[3:]: int(float(v)) for k, v in data.items() if k.startswith("fb:")}
    sums = {k[3:]: float(v) for k, v in data.items() if k.startswith("fv:")}
    histogram = {int(k[3:]): int(float(v)) for k, v in data.items() if k.startswith("lh:")}
    return ArmTotals(
        **{k: int(float(data.get(k, 0))) for k in _INT_TOTALS},
        **{k: float(data.get(k, 0.0)) for k in _FLOAT_TOTALS},
        signal_counts=counts,
        signal_value_sums=sums,
        latency_histogram=histogram,
    )


def _units(raw: Mapping[bytes | str, bytes | str] | Mapping[str, str]) -> UnitSums:
    s1: dict[str, float] = {}
    s2: dict[str, float] = {}
    cross: dict[str, float] = {}
    nonzero: dict[str, int] = {}
    units = moved = 0
    for k, v in raw.items():
        key, value = _text(k), float(_text(v))
        if key == "n":
            units = int(value)
        elif key == "moved_in":
            moved = int(value)
        elif key.startswith("s1:"):
            s1[key[3:]] = value
        elif key.startswith("s2:"):
            s2[key[3:]] = value
        elif key.startswith("x:"):
            cross[key[2:]] = value
        elif key.startswith("nz:"):
            nonzero[key[3:]] = int(value)
    return UnitSums(units=units, moved_in=moved, s1=s1, s2=s2, cross=cross, nonzero=nonzero)


async def read_snapshot(
    redis: aioredis.Redis, exp: Experiment, *, minutes: int = 0, now: float | None = None
) -> ExperimentSnapshot:
    """The experiment's snapshot; `minutes` > 0 adds that many per-minute points per arm."""
    taken = time.time() if now is None else now
    last_minute = int(taken // 60)
    span = list(range(last_minute - minutes + 1, last_minute + 1)) if minutes > 0 else []
    async with redis.pipeline(transaction=False) as pipe:
        for arm in ARMS:
            pipe.hgetall(keys.arm_totals(exp.name, arm))
            pipe.hgetall(keys.unit_sums(exp.name, arm))
            pipe.hgetall(keys.period_sums(exp.name, arm))
            for m in span:
                pipe.hgetall(keys.minute(exp.name, arm, m))
        rows = await pipe.execute()
    arms: dict[str, ArmSnapshot] = {}
    by_period: list[dict[bytes | str, bytes | str]] = []
    it = iter(rows)
    for arm in ARMS:
        totals, units = _totals(next(it)), _units(next(it))
        by_period.append(next(it))
        points: list[MinutePoint] = []
        for m in span:
            raw = {_text(k): _text(v) for k, v in next(it).items()}
            if raw:
                points.append(
                    MinutePoint(
                        minute=m,
                        requests=int(raw.get("requests", 0)),
                        errors=int(raw.get("errors", 0)),
                        client_closed=int(raw.get("client_closed", 0)),
                        latency_ms_sum=float(raw.get("latency_ms_sum", 0.0)),
                        completion_tokens=int(raw.get("completion_tokens", 0)),
                        feedback=int(raw.get("feedback", 0)),
                    )
                )
        arms[arm] = ArmSnapshot(totals=totals, units=units, minutes=points)
    return ExperimentSnapshot(
        experiment=exp.name,
        route=exp.route,
        treatment_percent=exp.treatment_percent,
        taken_at=taken,
        control=arms["control"],
        treatment=arms["treatment"],
        signals=(*BUILTIN_SIGNALS, *exp.signals),
        period=exp.period,
        since_period=exp.target_period,
        periods=_periods(*by_period),
    )


def decode_unit_totals(raw: bytes | str) -> dict[str, float]:
    """One unit's totals as its arm's hash stores them (`requests=3,latency_ms=812.5,...`),
    without those of its current period (`decode_period_totals`)."""
    out: dict[str, float] = {}
    for part in _text(raw).split(","):
        name, _, value = part.partition("=")
        if name and name != "@p" and not name.startswith("p."):
            out[name] = float(value)
    return out


def decode_period_totals(raw: bytes | str) -> tuple[int | None, dict[str, float]]:
    """The unit's current period (None: none recorded) and its totals in that period."""
    period: int | None = None
    out: dict[str, float] = {}
    for part in _text(raw).split(","):
        name, _, value = part.partition("=")
        if name == "@p":
            period = int(float(value))
        elif name.startswith("p."):
            out[name[2:]] = float(value)
    return period, out


def _periods(
    control: dict[bytes | str, bytes | str], treatment: dict[bytes | str, bytes | str]
) -> list[PeriodSums]:
    """The per-period sums of both arms (`keys.period_sums`), oldest period first."""
    split: dict[int, tuple[dict[str, str], dict[str, str]]] = {}
    hist: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
    for i, raw in enumerate((control, treatment)):
        for k, v in raw.items():
            period, _, field = _text(k).partition(":")
            if field.startswith("lh:"):  # the period's latency histogram
                hist.setdefault(int(period), ({}, {}))[i][int(field[3:])] = int(float(_text(v)))
            else:
                split.setdefault(int(period), ({}, {}))[i][field] = _text(v)
    return [
        PeriodSums(
            period=p,
            control=_units(c),
            treatment=_units(t),
            control_latency=hist.get(p, ({}, {}))[0],
            treatment_latency=hist.get(p, ({}, {}))[1],
        )
        for p, (c, t) in sorted(split.items())
    ]


async def read_unit_totals(
    redis: aioredis.Redis, experiment: str, arm: str, unit: str
) -> dict[str, float] | None:
    """One unit's totals in one arm; None when the arm never saw the unit (or they expired)."""
    raw = await redis.hget(keys.unit_totals(experiment, arm), unit)
    return None if raw is None else decode_unit_totals(raw)


async def unit_counts(redis: aioredis.Redis, names: list[str]) -> dict[tuple[str, str], int]:
    """Distinct units per (experiment, arm)."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for arm in ARMS:
                pipe.hget(keys.unit_sums(name, arm), "n")
        values = await pipe.execute()
    it = iter(values)
    return {(n, a): int(next(it) or 0) for n in names for a in ARMS}
