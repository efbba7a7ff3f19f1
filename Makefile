# `make demo`: set up and render the offline demo. `make test`: set up and run the test suite.
PYTHON ?= python3
VENV ?= .venv
# The CPU build for laptops and CI; GPU machines: make demo TORCH=torch (or any CUDA build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/sdbatch demo

lint: setup-test
	$(BIN)/ruff check sdbatch tests bench

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output
