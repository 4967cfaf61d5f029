# Everything runs from a project-local virtualenv that these targets create on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test lint types pytest demo bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

types: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

test: lint types pytest

demo: setup
	$(BIN)/ratepilot demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
