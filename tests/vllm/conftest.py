"""The session's real vLLM (tests/vllm/server.py): started once, shared by every test here.

Outside CI a machine that cannot install vLLM (no package index) skips these tests with the
reason; under ``CI=true`` that is a failure, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm.server import VllmServer, vllm_server


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    logs: Path = tmp_path_factory.mktemp("vllm")
    try:
        server_cm = vllm_server(logs)
        server = server_cm.__enter__()
    except (AssertionError, OSError, RuntimeError) as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"real vLLM unavailable here: {str(exc)[:500]}")
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)
