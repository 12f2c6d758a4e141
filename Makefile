# The README and .ci/run call these targets unchanged.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit demo demo-check bench stats-study clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/abgate demo

# the demo's ending, 20 times in a row with one core kept busy (about 40 minutes)
demo-check: $(STAMP)
	$(BIN)/python -m bench.demo_runs --runs 20 --load 1

stats-study: $(STAMP)
	$(BIN)/python -m bench.stats_study

bench: $(STAMP)
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.rollback
	$(BIN)/python -m bench.feedback
	$(BIN)/python -m bench.redact
	$(BIN)/python -m bench.cli

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
