# Every target that needs the virtual environment creates it first, so a fresh clone needs only
# `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench coverage clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/batchqwen run jobs/demo/manifest.csv --simulate --out out/demo
	$(BIN)/batchqwen report out/demo

lint: $(STAMP)
	$(BIN)/ruff check batchqwen tests bench
	$(BIN)/ruff format --check batchqwen tests bench
	$(BIN)/mypy

coverage: $(STAMP)
	$(BIN)/pytest -q --cov --cov-report=term

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
