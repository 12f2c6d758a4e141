"""`ABGATE_LOG_LEVEL` in any case: uvicorn and gunicorn spell levels in lower case."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from router import logs
from router.settings import Settings


@pytest.mark.parametrize("given", ["info", "INFO", "Info", " info "])
def test_the_level_is_accepted_in_any_case(given: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABGATE_LOG_LEVEL", given)
    assert Settings().log_level == "INFO"
    assert Settings(log_level=given.strip().lower()).log_level == "INFO"  # type: ignore[arg-type]


def test_an_unknown_level_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABGATE_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


def test_configure_takes_a_lower_case_level() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("debug", "text")
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
