# Two commands on a fresh machine:  `make run` (the main job) and `make test` (every check CI runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test lint bench
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps open-mythos==0.5.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: demo

demo: setup
	$(BIN)/mythos-lens demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python analyses/bench_capture.py
