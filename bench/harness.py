"""The gateway benchmark's child processes and its plain HTTP client (loopback only).

`spawn` starts a process pinned to a CPU from its first instruction, with its output in a log
file; `wait_ready` polls a URL until it answers 200, failing early (with the log's tail) when the
process exits.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import loadgen

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    pass


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
