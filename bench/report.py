"""The gateway benchmark's report: the table of figures and ratios, the notes, and the targets."""

from __future__ import annotations

from collections.abc import Callable

from bench.measure import PACED_DELAY_MS, STREAM_CHUNKS, Figures
from bench.procstat import format_speed

TARGET_RPS = 5000.0
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 1.5


def print_report(
    figs: dict[str, Figures],
    served: int,
    recorded: int,
    *,
    connections: int,
    speed: dict[int | None, float],
    speed_after: dict[int | None, float],
) -> bool:
    """Print the table, the notes and the targets; True when a target was missed."""
    direct, gw = figs["direct"], figs["gateway"]
    ng = figs.get("nginx")
    cols = ["direct", "gateway", "nginx", "gateway/direct", "nginx/direct"]
    rows: list[list[str]] = []

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None or b == 0 or a != a or b != b:
            return "-"
        return f"{a / b:.2f}x"

    def val(f: Figures | None, get: Callable[[Figures], float | None], fmt: str) -> str:
        v = get(f) if f is not None else None
        return "-" if v is None or v != v else format(v, fmt)

    def added(f: Figures | None, get: Callable[[Figures], float | None], fmt: str) -> str:
        if f is None:
            return "-"
        v, d = get(f), get(direct)
        if v is None or d is None:
            return "-"
        return f"{format(v, fmt)} ({v - d:+{fmt}})"

    def row(label: str, get: Callable[[Figures], float | None], fmt: str, add: bool) -> None:
        cell = added if add else val
        rows.append(
            [
                label,
                val(direct, get, fmt),
                cell(gw, get, fmt),
                cell(ng, get, fmt),
                ratio(get(gw), get(direct)),
                ratio(get(ng), get(direct)) if ng else "-",
            ]
        )

    conns = connections
    row(f"rps @{conns} conns", lambda f: f.rps.rps if f.rps else None, ",.0f", False)
    row("p50 @1 conn (ms)", lambda f: f.lat1.p50_ms if f.lat1 else None, ".3f", True)
    row("p99 @1 conn (ms)", lambda f: f.lat1.p99_ms if f.lat1 else None, ".3f", True)
    row(
        "stream ms/chunk",
        lambda f: f.stream.ms_per_chunk if f.stream else None,
        ".4f",
        True,
    )
    row(
        "chunk latency p50 (ms)*",
        lambda f: f.paced.chunk_latency_p50_ms if f.paced else None,
        ".3f",
        True,
    )
    row(
        "chunk latency p99 (ms)*",
        lambda f: f.paced.chunk_latency_p99_ms if f.paced else None,
        ".3f",
        True,
    )
    rows.append(
        [f"CPU us/request @{conns}", "-", val(gw, lambda f: f.cpu_us_per_request, ".0f"),
         val(ng, lambda f: f.cpu_us_per_request, ".0f"), "-", "-"]
    )  # fmt: skip
    rows.append(
        ["CPU us/request @1 conn", "-", val(gw, lambda f: f.cpu_us_per_request_1, ".0f"),
         val(ng, lambda f: f.cpu_us_per_request_1, ".0f"), "-", "-"]
    )  # fmt: skip
    rows.append(
        ["RSS MiB", "-", val(gw, lambda f: f.rss_mib, ".1f"),
         val(ng, lambda f: f.rss_mib, ".1f"), "-", "-"]
    )  # fmt: skip
    rows.append(["events recorded", "-", f"{recorded:,}/{served:,}", "-", "-", "-"])

    widths = [max(len(r[i]) for r in [["", *cols], *rows]) + 3 for i in range(len(cols) + 1)]
    print("".join(c.ljust(w) for c, w in zip(["", *cols], widths, strict=True)).rstrip())
    for r in rows:
        print("".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"* each chunk's delivery latency (upstream write -> client read) with the upstream "
        f"pacing chunks {PACED_DELAY_MS:g} ms apart; 'stream ms/chunk' is total time / "
        f"{STREAM_CHUNKS} chunks with chunks back to back."
    )
    print(
        f"events recorded: {recorded:,} request events in Redis for {served:,} requests the "
        "gateway served (abgate_requests_total)" + ("" if recorded == served else "  <-- MISMATCH")
    )
    if direct.cpu_us_per_request is not None:
        print(
            "upstream (fast_upstream) CPU per request in the direct run: "
            f"{direct.cpu_us_per_request:.0f} us "
            f"({100 * (direct.cpu_share or 0):.0f}% of a core)"
        )
    for f in figs.values():
        for note in f.notes:
            print(f"note: {f.name}: {note}")
    if speed_after:
        drift = max(abs(speed_after[c] / speed[c] - 1) for c in speed if speed[c])
        print(
            f"speed check after the runs: {format_speed(speed_after)}"
            + (f"  <-- {100 * drift:.0f}% drift: the machine's speed changed" if drift > 0.1
               else "")
        )  # fmt: skip
    if gw.cpu_share is not None:
        print(
            f"gateway process used {100 * gw.cpu_share:.0f}% of a core during the "
            f"{conns}-connection run"
            + ("" if gw.cpu_share > 0.9 else " (below 90%: the bottleneck may be elsewhere)")
        )

    print()
    print("targets (one gateway process on one core, event recording on):")
    assert gw.rps is not None and gw.lat1 is not None and direct.lat1 is not None
    met = [
        target(
            f"rps @{conns} conns >= {TARGET_RPS:,.0f}",
            gw.rps.rps,
            TARGET_RPS,
            higher=True,
            fmt=",.0f",
            unit=" req/s",
        ),
        target(
            f"added p50 @1 conn <= {TARGET_ADDED_P50_MS:.2f} ms",
            gw.lat1.p50_ms - direct.lat1.p50_ms,
            TARGET_ADDED_P50_MS,
            higher=False,
            fmt="+.3f",
            unit=" ms",
        ),
        target(
            f"added p99 @1 conn <= {TARGET_ADDED_P99_MS:.2f} ms",
            gw.lat1.p99_ms - direct.lat1.p99_ms,
            TARGET_ADDED_P99_MS,
            higher=False,
            fmt="+.3f",
            unit=" ms",
        ),
    ]
    if conns != 32:
        print(f"  (the rps target is defined at 32 connections; this run used {conns})")
    return not all(met)


def target(label: str, value: float, goal: float, *, higher: bool, fmt: str, unit: str) -> bool:
    """Print one target's line with its verdict; True when it is met."""
    ok = value >= goal if higher else value <= goal
    shown = format(value, fmt) + unit
    if ok:
        verdict = "met"
    else:
        gap = goal - value if higher else value - goal
        rel = 100.0 * gap / goal
        verdict = f"MISSED by {format(gap, fmt.lstrip('+'))}{unit} ({rel:.0f}%)"
    print(f"  {label:32s} {shown:>16s}   {verdict}")
    return ok
