"""Measuring one target of the gateway benchmark (direct, gateway or nginx).

Per target: a warm-up, requests/s at N connections and latency at 1 connection (each with the
CPU the target and Redis used meanwhile, and the other processes' CPU use as a noise check),
two streaming runs (back to back, and paced), and the target's RSS after the load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import loadgen
from bench.harness import Proc
from bench.loadgen import LoadResult, StreamResult
from bench.procstat import CpuWindow, cpu_seconds, rss_mib, tree_pids

STREAM_CHUNKS = 50
PACED_DELAY_MS = 1.0
NOISE_CORES = 0.1  # other processes' CPU use (in cores) above which a run is flagged noisy


@dataclass
class Figures:
    name: str
    rps: LoadResult | None = None
    lat1: LoadResult | None = None
    stream: StreamResult | None = None
    paced: StreamResult | None = None
    cpu_us_per_request: float | None = None
    cpu_share: float | None = None  # of one core, during the N-connection run
    cpu_us_per_request_1: float | None = None  # during the 1-connection run
    rss_mib: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    base: str  # http://127.0.0.1:PORT
    proc: Proc | None  # the process measured for CPU / RSS (None: direct)
    served: Callable[[], int] | None = None  # exact served count, when the target has one

    @property
    def url(self) -> str:
        return self.base + "/v1/chat/completions"


@dataclass
class Run:
    result: LoadResult
    served: int  # requests the target served during the run
    wall_s: float
    cpu_s: float  # CPU of the target's processes
    redis_cpu_s: float
    window: CpuWindow


def note_noise(fig: Figures, window: CpuWindow, what: str) -> None:
    if window.others > NOISE_CORES:
        fig.notes.append(
            f"other processes used {100 * window.others:.0f}% of a core during the {what}: "
            "its figures are noisy"
        )


@dataclass
class Measurer:
    """The load settings of one benchmark run, applied to each target in turn."""

    duration: float
    warmup: float
    stream_seconds: float
    connections: int
    use_wrk: bool
    aux_cpu: int | None  # the load generator's CPU (wrk)
    body: bytes
    stream_body: bytes
    redis_pids: list[int]
    check_alive: Callable[[], None]  # raises when a benchmark process died

    def load(self, target: Target, connections: int, duration: float) -> LoadResult:
        if self.use_wrk:
            return loadgen.wrk_load(
                target.url, self.body, duration=duration, connections=connections, cpu=self.aux_cpu
            )
        return loadgen.python_load(
            target.url, self.body, duration=duration, connections=connections
        )

    def timed_load(self, target: Target, connections: int) -> Run:
        """One measured load run, with the CPU the target (and Redis) used meanwhile."""
        pids = tree_pids(target.proc.pid) if target.proc else []
        served0 = target.served() if target.served else 0
        cpu0, redis0 = cpu_seconds(pids), cpu_seconds(self.redis_pids)
        window = CpuWindow()
        t0 = time.monotonic()
        result = self.load(target, connections, self.duration)
        wall = time.monotonic() - t0
        cpu1, redis1 = cpu_seconds(pids), cpu_seconds(self.redis_pids)
        window.close()
        served = (target.served() - served0) if target.served else result.requests
        self.check_alive()
        return Run(result, served, wall, cpu1 - cpu0, redis1 - redis0, window)

    def measure(self, target: Target) -> Figures:
        fig = Figures(target.name)
        conns = self.connections
        name = target.proc.name if target.proc else ""
        self.load(target, conns, self.warmup)

        run = self.timed_load(target, conns)
        r = fig.rps = run.result
        line = (
            f"  {target.name:8s} rps @{conns:<3d} {r.rps:10,.0f} req/s  "
            f"({r.requests:,} in {r.duration_s:.1f}s, {r.errors} errors)"
        )
        if target.proc is not None and run.served > 0:
            fig.cpu_us_per_request = run.cpu_s / run.served * 1e6
            fig.cpu_share = run.cpu_s / run.wall_s
            line += f"  {name} cpu {100 * fig.cpu_share:.0f}% of a core"
            if target.served is not None and self.redis_pids:
                fig.notes.append(
                    f"redis-server used {run.redis_cpu_s / run.served * 1e6:.0f} us CPU per "
                    f"request ({100 * run.redis_cpu_s / run.wall_s:.0f}% of a core) recording "
                    f"the events of the {conns}-connection run"
                )
        print(f"{line}  [{run.window.summary()}]")
        note_noise(fig, run.window, f"{conns}-connection run")
        if r.errors:
            fig.notes.append(f"{r.errors} errors in the {conns}-connection run")

        run = self.timed_load(target, 1)
        r = fig.lat1 = run.result
        line = (
            f"  {target.name:8s} @1 conn  p50 {r.p50_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  "
            f"({r.rps:,.0f} req/s, {r.errors} errors)"
        )
        if target.proc is not None and run.served > 0:
            fig.cpu_us_per_request_1 = run.cpu_s / run.served * 1e6
            line += (
                f"  {name} cpu {fig.cpu_us_per_request_1:.0f} us/request, "
                f"{100 * run.cpu_s / run.wall_s:.0f}% of a core"
            )
        print(f"{line}  [{run.window.summary()}]")
        note_noise(fig, run.window, "1-connection run")
        if r.errors:
            fig.notes.append(f"{r.errors} errors in the 1-connection run")

        s = fig.stream = loadgen.stream_run(
            target.url, self.stream_body, duration=self.stream_seconds, chunks=STREAM_CHUNKS
        )
        p = fig.paced = loadgen.stream_run(
            target.url,
            self.stream_body,
            duration=self.stream_seconds,
            chunks=STREAM_CHUNKS,
            delay_ms=PACED_DELAY_MS,
        )
        self.check_alive()
        print(
            f"  {target.name:8s} stream   {s.ms_per_chunk:.4f} ms/chunk ({s.total_ms_p50:.2f} ms "
            f"per {STREAM_CHUNKS}-chunk stream, {s.requests} streams, {s.errors} errors); paced "
            f"{PACED_DELAY_MS:g} ms: chunk latency p50 {p.chunk_latency_p50_ms:.3f} ms "
            f"p99 {p.chunk_latency_p99_ms:.3f} ms ({p.requests} streams, {p.errors} errors)"
        )
        if s.errors or p.errors:
            fig.notes.append(f"{s.errors + p.errors} failed streams")
        if target.proc is not None:
            fig.rss_mib = rss_mib(tree_pids(target.proc.pid))
        return fig
