"""Does `abgate demo` end as intended every time, also on a busy machine?

Runs the demo (``python -m router demo``, the same command as the installed ``abgate demo``)
`--runs` times in a row, each in its own reports folder, optionally while `--load` busy-loop
processes compete for the CPU (`--pin` pins them to cores in turn; unpinned by default, so the
scheduler spreads them). Each run's end state per experiment is read from the demo's own
summary lines (``<experiment>: <state> -> report <path>``); a run counts when every experiment
is in its intended state (`router.demo.run.INTENDED`: the better adapter promoted, the worse
one rolled back) and the demo exited 0. Prints one line per run, the wall times, and
"N of N runs reached the intended end states"; exits 1 when any run did not.

Run: ``python -m bench.demo_runs [--runs 20] [--load 1] [--pin] [--short] [--timeout 300]``
(``make demo-check``: 20 runs with one busy core).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from router.demo.run import INTENDED

# the live view's last frame may end without a newline: a name starts after any blank
SUMMARY = re.compile(r"(?:^|\s)(\S+): (\S+) -> report ", re.MULTILINE)
ROOT = Path(__file__).resolve().parent.parent


def _busy(cpu: int | None) -> None:
    """Burn one core until terminated (the load that `--load` adds)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def start_load(k: int, pin: bool) -> list[multiprocessing.Process]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    procs = []
    for i in range(k):
        p = multiprocessing.Process(
            target=_busy, args=(cpus[i % len(cpus)] if pin else None,), daemon=True
        )
        p.start()
        procs.append(p)
    return procs


def stop_load(procs: list[multiprocessing.Process]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=5)


def one_run(reports: Path, *, short: bool, timeout: float) -> tuple[int, dict[str, str], str]:
    """One `abgate demo`: (exit code, end state per experiment, its output)."""
    cmd = [sys.executable, "-m", "router", "demo", "--reports", str(reports)]
    cmd += ["--timeout", f"{timeout:g}"] + (["--short"] if short else [])
    env = {**os.environ, "COLUMNS": "160"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # its own process group: a demo that hangs is interrupted (it then stops the processes it
    # started) and, failing that, killed with all of them
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        text, _ = proc.communicate(timeout=timeout + 180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            text, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
        return 124, dict(SUMMARY.findall(text)), text + "\n(the demo did not exit by itself)"
    return proc.returncode, dict(SUMMARY.findall(text)), text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run `abgate demo` N times and check its ends")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load", type=int, default=0, help="busy-loop processes alongside")
    parser.add_argument("--pin", action="store_true", help="pin the busy loops to cores in turn")
    parser.add_argument("--short", action="store_true", help="the demo's --short mode")
    parser.add_argument("--timeout", type=float, default=300, help="the demo's --timeout")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    load = start_load(args.load, args.pin)
    walls: list[float] = []
    ok = 0
    try:
        with tempfile.TemporaryDirectory(prefix="abgate-demo-runs-") as tmp:
            for i in range(1, args.runs + 1):
                t0 = time.monotonic()
                code, states, text = one_run(
                    Path(tmp) / f"run-{i}", short=args.short, timeout=args.timeout
                )
                wall = time.monotonic() - t0
                walls.append(wall)
                good = code == 0 and all(states.get(k) == v for k, v in INTENDED.items())
                ok += good
                shown = ", ".join(f"{k} {states.get(k, '?')}" for k in INTENDED)
                print(f"run {i:>2}: {'ok  ' if good else 'FAIL'} {wall:6.1f} s  exit {code}  "
                      f"{shown}", flush=True)  # fmt: skip
                if not good:
                    print("    " + "\n    ".join(text.rstrip().splitlines()[-25:]), flush=True)
    finally:
        stop_load(load)
    pinned = " pinned" if args.pin and args.load else ""
    print(
        f"\nwall time per run: median {statistics.median(walls):.1f} s, max {max(walls):.1f} s "
        f"({args.load} busy-loop process{'es' if args.load != 1 else ''}{pinned}, "
        f"{os.cpu_count()} CPUs)"
    )
    print(f"{ok} of {args.runs} runs reached the intended end states")
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
