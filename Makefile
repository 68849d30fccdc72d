# One bootstrap for every target: a .venv with conveyor and its pinned stack, rebuilt only when
# pyproject.toml changes. Needs nothing but python3 (3.11 or 3.12) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bootstrap run test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

bootstrap: $(STAMP)

run: bootstrap
	$(BIN)/conveyor run

test: bootstrap
	$(BIN)/pytest

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: bootstrap
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	-$(BIN)/conveyor triton down
	rm -rf .conveyor
