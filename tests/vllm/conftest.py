"""The session's real vLLM (tests/vllm/server.py): started once, shared by every test here.

When the session includes these tests, the vLLM virtualenv and the tiny model are prepared in
a background thread from the end of collection on (a first run installs vLLM: minutes, mostly
download), so that the other tests run meanwhile; the fixture waits for it, then starts the
server. Outside CI a machine that cannot install vLLM (no package index) skips these tests
with the reason; under ``CI=true`` that is a failure, never a skip.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm.server import VllmServer, prepare, vllm_server

HERE = Path(__file__).parent
_prepared: dict[str, BaseException | None] = {}
_thread: list[threading.Thread] = []


def _prepare() -> None:
    try:
        prepare()
        _prepared["error"] = None
    except BaseException as exc:  # reported by the fixture, in the test that needs it
        _prepared["error"] = exc


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(HERE in Path(str(item.path)).parents for item in session.items) and not _thread:
        _thread.append(threading.Thread(target=_prepare, name="vllm-prepare", daemon=True))
        _thread[0].start()


def _unavailable(exc: BaseException) -> None:
    if os.environ.get("CI") == "true":
        raise exc
    pytest.skip(f"real vLLM unavailable here: {str(exc)[:500]}")


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if _thread:
        _thread[0].join()
    error = _prepared.get("error")
    if error is not None:
        _unavailable(error)
    logs: Path = tmp_path_factory.mktemp("vllm")
    server_cm = vllm_server(logs)
    try:
        server = server_cm.__enter__()
    except (AssertionError, OSError, RuntimeError) as exc:
        _unavailable(exc)
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)
