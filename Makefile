# Two commands on a fresh machine:  `make run` (the main job) and `make test` (every check CI runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test lint bench browser-deps
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps open-mythos==0.5.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/streamlit run app/main.py --server.headless=true --browser.gatherUsageStats=false

demo: setup
	$(BIN)/mythos-lens demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's chromium for the real-browser app test (tests/app/test_browser.py), only if missing.
# If it cannot be installed, that test fails under CI=true and skips otherwise.
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ($$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	  || { echo "browser-deps: could not install chromium"; [ "$$CI" != "true" ]; }; \
	fi

test: lint browser-deps
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python analyses/bench_capture.py
