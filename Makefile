# Two commands for a newcomer: `make run` and `make test`. Each builds .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install run test test-fast bench bench-erase screenshot ui ui-live lint format clean

# $(call install,EXTRAS,WHAT): install the project (with EXTRAS) into .venv, with uv when it is
# on the PATH, else pip; refuse a Python older than 3.11 before anything is installed; and
# leave no half-made .venv behind when the install fails.
define install
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else \
	  f"cdr-pipeline needs Python 3.11 or newer; $(PYTHON) is {v.major}.{v.minor}: run make again \
	  with PYTHON=python3.11 (or newer)")'
	@echo "installing $(2) into $(VENV) (a minute or two the first time) ..."
	@if command -v uv >/dev/null 2>&1; then \
	  { test -x $(BIN)/python || uv venv -q --python $(PYTHON) $(VENV); } && \
	  uv pip install -q --python $(BIN)/python -c constraints.txt -e ".$(1)"; \
	else \
	  { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } && \
	  $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".$(1)"; \
	fi || { rm -rf $(VENV); echo "make: the install failed (above); $(VENV) was removed" >&2; exit 1; }
endef

$(RUN_STAMP): pyproject.toml constraints.txt
	$(call install,,the pipeline)
	@touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(call install,[test],the test tools)
	@touch $@

install: $(RUN_STAMP)

# The demo asks for the simulator by name: without CDR_SIMULATOR (or CDR_API_URL), nothing is
# fetched, so a misspelt endpoint variable can never fall back to synthetic calls. With it, the
# data go to data/demo and the partitions are the last 30 days (cdr_pipeline/settings/), and the runs to
# the demo's own Dagster instance: nothing of the demo mixes with a real API's days.
run ui screenshot: export CDR_SIMULATOR = true
run ui screenshot: export DAGSTER_HOME = $(CURDIR)/.dagster_home/demo
ui-live: export DAGSTER_HOME ?= $(CURDIR)/.dagster_home/live

## Materialize the last 7 complete days from the built-in simulator and print their KPIs.
run: $(RUN_STAMP)
	$(BIN)/cdr-pipeline materialize --last 7

## The whole suite: lint, then every test. Three workers on two cores: many tests wait on a
## daemon's ticks or a server, and the third uses the time they leave.
test: $(TEST_STAMP)
	$(BIN)/ruff check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format --check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/pytest -n 3 -q -p no:cacheprovider

## The tests that start no process (the CLI, servers, Dagster's webserver and daemon are
## left out) nor wait out real deadlines, with a quarter of the property tests' examples, in
## about a minute and a half on two cores: for the edit-test loop. Four workers, because
## these tests wait on loopback servers more than they compute. `make test` runs everything.
test-fast: $(TEST_STAMP)
	$(BIN)/pytest -n 4 -q -p no:cacheprovider -m "not slow" --hypothesis-profile=fast

## Speed and memory against naive pandas, dlt and a plain pyarrow pipeline; writes
## benchmarks/RESULTS.md (about 12 minutes from a fresh clone).
BENCH_STAMP := $(VENV)/.bench-installed
# A variable: a comma written in $(call ...) would split the argument.
BENCH_EXTRAS := [test,bench]
$(BENCH_STAMP): $(TEST_STAMP)
	$(call install,$(BENCH_EXTRAS),the benchmark baselines)
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

## The erase command end to end on a month of days of a million calls (generated and
## published once: about 5 GB under benchmarks/.data, and as much again for the copy each
## round erases from); writes benchmarks/RESULTS-erase.md.
bench-erase: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.erase_month

## Regenerate docs/partitions.png (the README's screenshot) with the webserver and headless Chromium.
screenshot: $(TEST_STAMP)
	$(BIN)/python docs/screenshot.py --out docs/partitions.png

## The Dagster UI on http://127.0.0.1:$(UI_PORT) (`dg dev`): `make ui` with the demo's runs,
## `make ui-live` with the real API's (the endpoint and credentials from the environment or .env).
UI_PORT ?= 3000
ui ui-live: $(RUN_STAMP)
	@$(BIN)/python -c "from cdr_pipeline.cli.days import local_home; local_home()"
	@$(BIN)/python -c "import socket, sys; s = socket.socket(); \
	  s.bind(('127.0.0.1', $(UI_PORT)))" 2>/dev/null || { \
	  echo "make ui: port $(UI_PORT) is taken; run: make ui UI_PORT=3001" >&2; exit 1; }
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/dg dev --use-active-venv -h 127.0.0.1 -p $(UI_PORT)

lint: $(TEST_STAMP)
	$(BIN)/ruff check cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format --check cdr_pipeline cdr_pipeline_tests benchmarks docs

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix cdr_pipeline cdr_pipeline_tests benchmarks docs
	$(BIN)/ruff format cdr_pipeline cdr_pipeline_tests benchmarks docs

# The demo's data and runs go, never the real API's (data/live, .dagster_home/live). The
# datasets' folders are the registry's (python -m cdr_pipeline.datasets), asked before the
# virtualenv goes: only what the pipeline writes under data/demo is removed, never through a
# symbolic link.
DEMO_DATA := data/demo
DEMO_SHARED := data/demo-shared
clean:
	@if test -L $(DEMO_DATA) || test -L $(DEMO_SHARED) || test -L .dagster_home || \
	  test -L .dagster_home/demo; then \
	  echo "make clean: $(DEMO_DATA), $(DEMO_SHARED) or .dagster_home/demo is a symbolic link: left alone" >&2; \
	  exit 1; fi
	@if test -x $(BIN)/python; then \
	  for d in $$($(BIN)/python -m cdr_pipeline.datasets) raw _state erasures report.html; do \
	    rm -rf "$(DEMO_DATA)/$$d" "$(DEMO_SHARED)/$$d"; done; fi
	rm -rf $(VENV) .dagster_home/demo
