"""Fixtures of the vLLM emulator's tests (helpers: tests/serving/emulator_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.serving.emulator_helpers import client_for, make_app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(allow_runtime_lora_updating=True)) as c:
        yield c
