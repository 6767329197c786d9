# Two commands for a newcomer: `make run` and `make test`. Each builds .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: install run test bench screenshot ui lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Materialize the last 7 complete days from the built-in simulator and print their KPIs.
run: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/cdr-pipeline materialize --last 7

## The whole suite: lint, then every test.
test: $(STAMP)
	$(BIN)/ruff check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format --check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/pytest -n 2 -q -p no:cacheprovider

## Speed and memory against naive pandas and dlt; writes benchmarks/RESULTS.md (~10 min).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

## Regenerate docs/partitions.png (the README's screenshot) with the webserver and headless Chromium.
screenshot: $(STAMP)
	$(BIN)/python docs/screenshot.py --out docs/partitions.png

## The Dagster UI on http://127.0.0.1:$(UI_PORT) (`dg dev`) with the runs of `make run`.
UI_PORT ?= 3000
ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	@$(BIN)/python -c "import socket, sys; s = socket.socket(); \
	  s.bind(('127.0.0.1', $(UI_PORT)))" 2>/dev/null || { \
	  echo "make ui: port $(UI_PORT) is taken; run: make ui UI_PORT=3001" >&2; exit 1; }
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/dg dev --use-active-venv -h 127.0.0.1 -p $(UI_PORT)

lint: $(STAMP)
	$(BIN)/ruff check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format --check cdr_pipeline cdr_pipeline_tests benchmarks docs

format: $(STAMP)
	$(BIN)/ruff check --fix cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format cdr_pipeline cdr_pipeline_tests benchmarks docs

clean:
	rm -rf $(VENV) .dagster_home data/raw data/cdr data/cdr_rejects data/call_outcome_daily \
	  data/call_kpis_daily data/_state
