"""The session's real vLLM (tests/vllm/server.py): started once, shared by every test here.

When the session will run these tests, the vLLM virtualenv and the tiny model are prepared in
a background thread from the end of collection on (a first run installs vLLM: minutes, mostly
download, at low priority), so that the other tests run meanwhile; the thread keeps the
virtualenv's shared lock until the session ends, and the fixture waits for it before starting
the server. A session that ends first stops the preparation (an unfinished install is
completed by the next run).

Outside CI, a machine where vLLM cannot be installed (no package index, no CPU torch wheel)
skips these tests with pip's reason; any other failure (building the model, starting the
server) fails them. Under ``CI=true`` nothing here skips.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm.server import (
    VllmServer,
    VllmUnavailable,
    assets,
    external_url,
    stop_preparation,
    vllm_server,
    vllm_venv,
)

HERE = Path(__file__).parent
_held = contextlib.ExitStack()  # the virtualenv's shared lock, from preparation to session end
_state: dict[str, BaseException | None] = {}
_thread: list[threading.Thread] = []


def _prepare() -> None:
    try:
        if external_url() is None:
            assets(_held.enter_context(vllm_venv()))
        _state["error"] = None
    except BaseException as exc:  # reported by the fixture, in the test that needs it
        _state["error"] = exc


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or _thread:
        return
    if any(HERE in Path(str(item.path)).parents for item in session.items):
        _thread.append(threading.Thread(target=_prepare, name="vllm-prepare", daemon=True))
        _thread[0].start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_preparation()
    if _thread:
        _thread[0].join(timeout=60)
    _held.close()


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if not _thread:  # collected without the hook (a single test id): prepare here
        _prepare()
    else:
        _thread[0].join()
    error = _state.get("error")
    if isinstance(error, VllmUnavailable) and os.environ.get("CI") != "true":
        pytest.skip(f"vLLM cannot be installed here: {str(error)[:500]}")
    if error is not None:
        raise error
    logs: Path = tmp_path_factory.mktemp("vllm")
    with vllm_server(logs) as server:
        yield server
