"""Process and machine measurements for the gateway benchmark, from /proc (Linux).

CPU seconds and RSS of a process tree, the CPUs each thread may run on, per-CPU busy time and
how much CPU processes outside the benchmark used (`CpuWindow`), and a fixed pure-Python loop
timed on each CPU as a speed index (`speed_check`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from bench import loadgen

_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
