"""`python -m bench.gateway` (`make bench`): the gateway's overhead against a fast upstream.

One run starts a private redis-server, `bench.fast_upstream`, the gateway (`python -m router
serve`, event recording on) and, when installed, nginx with `split_clients` as a reference
proxy, all on 127.0.0.1. It measures, against the same upstream:

1. requests/s at N (32) connections, non-streaming POST /v1/chat/completions;
2. p50 and p99 latency at 1 connection, and what each proxy adds to the direct figure;
3. streaming: total time / chunks of a 50-chunk stream, and each chunk's delivery latency;
4. the gateway's RSS after the load;
5. CPU time per request of the gateway (and of nginx) over the N-connection run;

and prints a table with ratios and the targets. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench import loadgen
from bench.loadgen import LoadResult, StreamResult

TARGET_RPS = 5000.0
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 1.5
EXPERIMENT = "bench"
ROUTE = "support-bot"
STREAM_CHUNKS = 50
PACED_DELAY_MS = 1.0
NOISE_CORES = 0.1  # other processes' CPU use (in cores) above which a run is flagged noisy

QUESTION = "How do I reset my password?"


def request_body(stream: bool, prompt_bytes: int = 0) -> bytes:
    """The chat request: one short question, or a history of messages of about
    `prompt_bytes` in total before it (in the OpenAI SDK's field order: messages, then model)."""
    messages: list[dict[str, str]] = []
    filler = "Thanks, that helped. Another thing about my account settings. " * 4
    size = 0
    while size < prompt_bytes:
        role = "assistant" if len(messages) % 2 else "user"
        messages.append({"role": role, "content": filler})
        size += len(filler) + 32
    messages.append({"role": "user", "content": QUESTION})
    body: dict[str, object] = {"messages": messages} if prompt_bytes else {}
    body["model"] = ROUTE
    if not prompt_bytes:
        body["messages"] = messages
    body["max_tokens"] = 64
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    pass


# -- processes --------------------------------------------------------------------------------


class Proc:
    """A child process started by the bench, with its output in a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 8.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def spawn(
    name: str,
    cmd: list[str],
    *,
    cpu: int | None,
    log: Path,
    env: dict[str, str] | None = None,
    procs: list[Proc],
) -> Proc:
    with log.open("wb") as out:
        popen = loadgen.popen_on_cpu(
            cmd, cpu, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=_REPO,
        )  # fmt: skip
    proc = Proc(name, popen, log)
    procs.append(proc)
    return proc


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (nginx master and workers, for example)."""
    out = [pid]
    i = 0
    while i < len(out):
        task_dir = Path(f"/proc/{out[i]}/task")
        with contextlib.suppress(OSError):
            for task in task_dir.iterdir():
                with contextlib.suppress(OSError):
                    out.extend(int(c) for c in (task / "children").read_text().split())
        i += 1
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / _CLK_TCK


def rss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024.0


def affinity_summary(pid: int, tree: bool = True) -> str:
    """The CPUs of every thread of the process (and its descendants), e.g. 'cpu 0 (5 threads)'."""
    seen: dict[str, int] = {}
    for p in tree_pids(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    cpus = sorted(os.sched_getaffinity(int(task.name)))
                    key = ",".join(map(str, cpus))
                    seen[key] = seen.get(key, 0) + 1
    return "; ".join(f"cpu {k} ({n} threads)" for k, n in seen.items()) or "?"


def redis_pids(port: int) -> list[int]:
    """The redis-server child of this driver that listens on `port` (started by EmbeddedRedis)."""
    found = []
    for pid in tree_pids(os.getpid())[1:]:
        with contextlib.suppress(OSError):
            # redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"redis-server" in cmd and f":{port}".encode() in cmd:
                found.append(pid)
    return found


def cpu_times() -> dict[str, tuple[int, int, int]]:
    """Per-CPU jiffies from /proc/stat: (busy incl. irq/softirq, user+nice+system, total)."""
    out: dict[str, tuple[int, int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                nums = [int(v) for v in vals[:8]]
                total = sum(nums)
                out[name] = (total - nums[3] - nums[4], nums[0] + nums[1] + nums[2], total)
    return out


def own_cpu_seconds() -> float:
    """CPU of this driver, its live descendants, and its reaped children (wrk runs)."""
    total = cpu_seconds(tree_pids(os.getpid()))
    with contextlib.suppress(OSError):
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[13]) + int(fields[14])) / _CLK_TCK  # cutime, cstime
    return total


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def speed_check(cpus: list[int | None]) -> dict[int | None, float]:
    """Milliseconds of a fixed pure-Python loop on each CPU (best of 5): a speed index to compare
    runs with (a shared or virtual machine's cores get slower and faster between runs)."""
    out: dict[int | None, float] = {}
    for cpu in cpus:
        with loadgen.on_cpu(cpu):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                _spin(200_000)
                best = min(best, time.perf_counter() - t0)
        out[cpu] = best * 1e3
    return out


def format_speed(speed: dict[int | None, float]) -> str:
    return ", ".join(
        f"{'cpu ' + str(cpu) if cpu is not None else 'unpinned'} {ms:.2f} ms"
        for cpu, ms in speed.items()
    )


class CpuWindow:
    """CPU use over one run: each CPU's busy share, and how much of a core processes outside
    this benchmark (another test run, say) used meanwhile, which makes the figures noisy."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._stat0 = cpu_times()
        self._ours0 = own_cpu_seconds()
        self.per_cpu = ""
        self.others = 0.0  # in cores

    def close(self) -> CpuWindow:
        wall = max(1e-9, time.monotonic() - self._t0)
        stat1 = cpu_times()
        ours = own_cpu_seconds() - self._ours0
        parts = []
        proc_busy = 0
        for name in sorted(stat1):
            if name in self._stat0:
                before, after = self._stat0[name], stat1[name]
                busy, user_sys, total = (after[i] - before[i] for i in range(3))
                proc_busy += user_sys
                if total > 0:
                    parts.append(f"{name} {100.0 * busy / total:.0f}%")
        self.per_cpu = ", ".join(parts)
        self.others = max(0.0, (proc_busy / _CLK_TCK - ours) / wall)
        return self

    def summary(self) -> str:
        return f"{self.per_cpu}; others {100 * self.others:.0f}%"


# -- HTTP helpers -----------------------------------------------------------------------------


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    loadgen.check_loopback(url)
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_ready(url: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            status, _, body = http(url, timeout=1)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not ready at {url} after {timeout}s ({last}):\n{proc.tail()}")


def gateway_served(base: str) -> int:
    """Requests the gateway proxied, from its abgate_requests_total counter."""
    _, _, body = http(base + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("abgate_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


def events_recorded(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        total = 0
        for arm in ("control", "treatment"):
            value = client.hget(f"abgate:{{{EXPERIMENT}}}:arm:{arm}", "requests")
            total += int(value) if value else 0
        return total
    finally:
        client.close()


# -- nginx ------------------------------------------------------------------------------------

_NGINX_CONF = """# generated by bench/gateway.py
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream control {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    upstream treatment {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    split_clients "${{http_x_user_id}}" $arm {{
        10% treatment;
        *   control;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://$arm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            add_header X-ABGate-Arm $arm always;
        }}
    }}
}}
"""


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


# -- the benchmark ----------------------------------------------------------------------------


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.duration: float = args.duration or (1.0 if self.quick else 6.0)
        self.warmup: float = 1.0 if self.quick else 2.0
        self.stream_seconds: float = 0.5 if self.quick else 2.0
        self.connections: int = args.connections
        self.gw_cpu: int | None = None
        self.aux_cpu: int | None = None
        self.use_wrk = args.loadgen == "wrk" or (
            args.loadgen == "auto" and loadgen.wrk_path() is not None
        )
        if args.loadgen == "wrk" and loadgen.wrk_path() is None:
            raise BenchError("--loadgen wrk: wrk is not installed")
        self.nginx = None if args.no_nginx else shutil.which("nginx")
        self.procs: list[Proc] = []
        self.redis_pids: list[int] = []
        self.speed: dict[int | None, float] = {}
        self.speed_after: dict[int | None, float] = {}
        self.body = request_body(False, args.prompt_bytes)
        self.stream_body = request_body(True, args.prompt_bytes)

    # -- set-up ---------------------------------------------------------------------------

    def machine_info(self) -> None:
        model = ""
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        try:
            loop = "uvloop " + importlib.metadata.version("uvloop")
        except importlib.metadata.PackageNotFoundError:
            loop = "asyncio"
        allowed = sorted(os.sched_getaffinity(0))
        print("abgate gateway benchmark")
        print(f"  nproc          {os.cpu_count()} (this process may run on cpus {allowed})")
        print(f"  cpu            {model or platform.processor() or '?'}")
        print(f"  kernel         {platform.system()} {platform.release()}")
        print(f"  python         {platform.python_version()} ({sys.executable})")
        print(f"  event loop     {loop}")
        wrk = loadgen.wrk_path()
        print(f"  load generator {'wrk (' + wrk + ')' if self.use_wrk and wrk else 'python'}")
        print(
            "  nginx          "
            + (f"{nginx_version(self.nginx)} ({self.nginx})" if self.nginx else "not used")
        )
        print(
            f"  runs           {self.duration:g}s each (warm-up {self.warmup:g}s), "
            f"{self.connections} connections{'; --quick' if self.quick else ''}"
        )
        print(f"  request body   {len(self.body)} bytes (streaming: {len(self.stream_body)})")

    def plan_pinning(self) -> None:
        allowed = sorted(os.sched_getaffinity(0))
        if self.args.no_pin:
            print("pinning: off (--no-pin)")
            return
        if len(allowed) < 2:
            print(f"pinning: not applied (only cpus {allowed} available)")
            return
        self.gw_cpu, self.aux_cpu = allowed[0], allowed[1]
        try:
            os.sched_setaffinity(0, {self.aux_cpu})
        except OSError as exc:
            print(f"pinning: not applied ({exc})")
            self.gw_cpu = self.aux_cpu = None
            return
        print(
            f"pinning: gateway and nginx -> cpu {self.gw_cpu}; upstream, redis, load generator "
            f"and this driver -> cpu {self.aux_cpu}"
        )

    def load(self, target: Target, connections: int, duration: float) -> LoadResult:
        if self.use_wrk:
            return loadgen.wrk_load(
                target.url, self.body, duration=duration, connections=connections, cpu=self.aux_cpu
            )
        return loadgen.python_load(
            target.url, self.body, duration=duration, connections=connections
        )

    # -- measurements ---------------------------------------------------------------------

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
        self.note_noise(fig, run.window, f"{conns}-connection run")
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
        self.note_noise(fig, run.window, "1-connection run")
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

    @staticmethod
    def note_noise(fig: Figures, window: CpuWindow, what: str) -> None:
        if window.others > NOISE_CORES:
            fig.notes.append(
                f"other processes used {100 * window.others:.0f}% of a core during the {what}: "
                "its figures are noisy"
            )

    def preflight(self) -> None:
        """Is the machine idle? Others' CPU use during the runs skews every figure."""
        self.speed = speed_check([self.gw_cpu, self.aux_cpu] if self.gw_cpu is not None else [None])
        print(f"speed check (fixed Python loop, lower is faster): {format_speed(self.speed)}")
        window = CpuWindow()
        time.sleep(1.0)
        window.close()
        print(f"machine load before start: {window.summary()} (1 s sample)")
        if window.others > NOISE_CORES:
            print(
                f"warning: other processes use {100 * window.others:.0f}% of a core; "
                "the figures will be noisy (rerun on an idle machine)"
            )

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        from router.embedded_redis import EmbeddedRedis, free_port

        self.machine_info()
        self.plan_pinning()
        self.preflight()
        tmp = Path(tempfile.mkdtemp(prefix="abgate-bench-"))
        redis: EmbeddedRedis | None = None
        try:
            # Started while this driver is pinned to the aux cpu: redis inherits it.
            redis = EmbeddedRedis(appendonly=False, data_dir=tmp / "redis")
            (tmp / "redis").mkdir()
            redis.start()
            up_port, gw_port = free_port(), free_port()
            upstream = spawn(
                "upstream",
                [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port),
                 "--chunks", str(STREAM_CHUNKS)],
                cpu=self.aux_cpu, log=tmp / "upstream.log", procs=self.procs,
            )  # fmt: skip
            config = {
                "experiments": [
                    {
                        "name": EXPERIMENT,
                        "route": ROUTE,
                        "control": {"base_url": f"http://127.0.0.1:{up_port}/v1", "model": "base"},
                        "treatment": {
                            "base_url": f"http://127.0.0.1:{up_port}/v1",
                            "model": "lora",
                        },
                        "treatment_percent": 10,
                    }
                ]
            }
            cfg = tmp / "abgate.yaml"
            cfg.write_text(json.dumps(config, indent=2))
            env = {k: v for k, v in os.environ.items() if not k.startswith("ABGATE_")}
            env.update(ABGATE_REDIS_URL=redis.url, ABGATE_LOG_LEVEL="WARNING")
            gateway = spawn(
                "gateway",
                [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                 "--port", str(gw_port)],
                cpu=self.gw_cpu, log=tmp / "gateway.log", env=env, procs=self.procs,
            )  # fmt: skip
            nginx: Proc | None = None
            if self.nginx:
                ng_port = free_port()
                conf = tmp / "nginx.conf"
                conf.write_text(_NGINX_CONF.format(tmp=tmp, upstream_port=up_port, port=ng_port))
                nginx = spawn(
                    "nginx",
                    [self.nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf),
                     "-g", "daemon off;"],
                    cpu=self.gw_cpu, log=tmp / "nginx.out", procs=self.procs,
                )  # fmt: skip
            up_base = f"http://127.0.0.1:{up_port}"
            gw_base = f"http://127.0.0.1:{gw_port}"
            wait_ready(up_base + "/health", upstream)
            wait_ready(gw_base + "/readyz", gateway)
            if nginx is not None:
                wait_ready(f"http://127.0.0.1:{ng_port}/health", nginx)

            print("processes:")
            self.redis_pids = redis_pids(redis.port)
            for pid in self.redis_pids:
                print(f"  {'redis-server':13s} pid {pid:<7d} {affinity_summary(pid)}")
            for proc in self.procs:
                print(f"  {proc.name:13s} pid {proc.pid:<7d} {affinity_summary(proc.pid)}")
            me = os.getpid()
            print(f"  {'this driver':13s} pid {me:<7d} {affinity_summary(me, tree=False)}")

            self.sanity_check(gw_base, f"http://127.0.0.1:{ng_port}" if nginx else None)
            # direct: the upstream's own CPU per request is reported as a note.
            targets = [Target("direct", up_base, upstream)]
            targets.append(Target("gateway", gw_base, gateway, lambda: gateway_served(gw_base)))
            if nginx is not None:
                targets.append(Target("nginx", f"http://127.0.0.1:{ng_port}", nginx))

            print("runs:")
            figures = {t.name: self.measure(t) for t in targets}
            served, recorded = self.wait_events(gw_base, redis.url)
            self.speed_after = speed_check(list(self.speed))
            print()
            self.report(figures, served, recorded)
            if self.args.keep_logs:
                print(f"logs kept in {tmp}")
            return 1 if (self.args.strict and self.missed) else 0
        finally:
            for proc in reversed(self.procs):
                proc.stop()
            if redis is not None:
                redis.cleanup()
            if not self.args.keep_logs:
                shutil.rmtree(tmp, ignore_errors=True)

    def sanity_check(self, gw_base: str, nginx_base: str | None) -> None:
        headers = {"Content-Type": "application/json", "X-User-Id": "bench-check"}
        status, hdrs, body = http(gw_base + "/v1/chat/completions", self.body, headers)
        arm = hdrs.get("x-abgate-arm")
        if status != 200 or not arm:
            raise BenchError(
                f"the gateway answered {status} without x-abgate-arm: {hdrs} {body[:300]!r}"
            )
        model = json.loads(body).get("model")
        print(
            f"check: gateway 200, x-abgate-experiment={hdrs.get('x-abgate-experiment')} "
            f"x-abgate-arm={arm}, upstream model {model!r}"
        )
        if nginx_base:
            status, hdrs, body = http(nginx_base + "/v1/chat/completions", self.body, headers)
            if status != 200:
                raise BenchError(f"nginx answered {status}: {body[:300]!r}")
            print(f"check: nginx 200, split_clients arm={hdrs.get('x-abgate-arm')}")

    def wait_events(self, gw_base: str, redis_url: str) -> tuple[int, int]:
        """The gateway's served count and the events in Redis, once the writer caught up."""
        time.sleep(1.0)
        deadline = time.monotonic() + 10.0
        while True:
            served = gateway_served(gw_base)
            recorded = events_recorded(redis_url)
            if recorded >= served or time.monotonic() > deadline:
                return served, recorded
            time.sleep(0.25)

    # -- report ---------------------------------------------------------------------------

    missed: bool = False

    def report(self, figs: dict[str, Figures], served: int, recorded: int) -> None:
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

        conns = self.connections
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
            "gateway served (abgate_requests_total)"
            + ("" if recorded == served else "  <-- MISMATCH")
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
        if self.speed_after:
            drift = max(
                abs(self.speed_after[c] / self.speed[c] - 1) for c in self.speed if self.speed[c]
            )
            print(
                f"speed check after the runs: {format_speed(self.speed_after)}"
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
        self.target(
            f"rps @{conns} conns >= {TARGET_RPS:,.0f}",
            gw.rps.rps,
            TARGET_RPS,
            higher=True,
            fmt=",.0f",
            unit=" req/s",
        )
        self.target(
            f"added p50 @1 conn <= {TARGET_ADDED_P50_MS:.2f} ms",
            gw.lat1.p50_ms - direct.lat1.p50_ms,
            TARGET_ADDED_P50_MS,
            higher=False,
            fmt="+.3f",
            unit=" ms",
        )
        self.target(
            f"added p99 @1 conn <= {TARGET_ADDED_P99_MS:.2f} ms",
            gw.lat1.p99_ms - direct.lat1.p99_ms,
            TARGET_ADDED_P99_MS,
            higher=False,
            fmt="+.3f",
            unit=" ms",
        )
        if conns != 32:
            print(f"  (the rps target is defined at 32 connections; this run used {conns})")

    def target(
        self, label: str, value: float, goal: float, *, higher: bool, fmt: str, unit: str
    ) -> None:
        ok = value >= goal if higher else value <= goal
        shown = format(value, fmt) + unit
        if ok:
            verdict = "met"
        else:
            self.missed = True
            gap = goal - value if higher else value - goal
            rel = 100.0 * gap / goal
            verdict = f"MISSED by {format(gap, fmt.lstrip('+'))}{unit} ({rel:.0f}%)"
        print(f"  {label:32s} {shown:>16s}   {verdict}")


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Gateway overhead vs. direct (and nginx) against a fast local upstream.",
    )
    parser.add_argument("--duration", type=float, help="seconds per load run (default 6)")
    parser.add_argument("--connections", type=int, default=32, help="for the rps run")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto",
        help="auto: wrk when installed, else the asyncio load generator",
    )  # fmt: skip
    parser.add_argument(
        "--prompt-bytes", type=int, default=0,
        help="pad the request with a chat history of about this many bytes (default: a short "
        "question; the targets are defined for that)",
    )  # fmt: skip
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cpus")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.connections < 1 or (args.duration is not None and args.duration <= 0):
        parser.error("--connections and --duration must be positive")
    if args.prompt_bytes < 0:
        parser.error("--prompt-bytes must be >= 0")
    try:
        with _terminate_as_interrupt():
            return Bench(args).run()
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
