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
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bench import loadgen
from bench.harness import BenchError, Proc, http, spawn, wait_ready
from bench.measure import NOISE_CORES, STREAM_CHUNKS, Figures, Measurer, Target
from bench.nginx import nginx_version, start_nginx
from bench.procstat import CpuWindow, affinity_summary, format_speed, redis_pids, speed_check
from bench.report import print_report

EXPERIMENT = "bench"
ROUTE = "support-bot"

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
        self.missed = False
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
        from router.runtime.embedded_redis import EmbeddedRedis, free_port

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
                nginx = start_nginx(
                    self.nginx, tmp, upstream_port=up_port, port=ng_port, cpu=self.gw_cpu,
                    procs=self.procs,
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

            measurer = Measurer(
                duration=self.duration,
                warmup=self.warmup,
                stream_seconds=self.stream_seconds,
                connections=self.connections,
                use_wrk=self.use_wrk,
                aux_cpu=self.aux_cpu,
                body=self.body,
                stream_body=self.stream_body,
                redis_pids=self.redis_pids,
                check_alive=self.check_alive,
            )
            print("runs:")
            figures = {t.name: measurer.measure(t) for t in targets}
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

    def report(self, figures: dict[str, Figures], served: int, recorded: int) -> None:
        self.missed = print_report(
            figures,
            served,
            recorded,
            connections=self.connections,
            speed=self.speed,
            speed_after=self.speed_after,
        )


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
