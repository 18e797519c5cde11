# geoseg: `make demo` runs the pipeline on embedded defaults, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= $(CURDIR)/data
export GEOSEG_DATA_DIR := $(DATA)
export DAGSTER_HOME := $(DATA)/dagster_home

.PHONY: install demo test ui check ui-prod bench browser services clean lock

# torch/torchvision go in first as the matched pair that lies on this machine's disk; then the
# project with every dependency pinned by requirements.lock (regenerate it with `make lock`). pip compiles the
# bytecode at install on purpose: where PYTHONDONTWRITEBYTECODE=1 (this machine and CI) nothing else ever writes it,
# and with --no-compile every process compiled torch, dagster & co. from source (the suite took 1839 s, not 1065 s).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The embedded instance (SQLite): the run launcher forks runs from a warm worker (geoseg_assets/warm_runs.py) and
# checks each STARTED run's worker, so a run whose worker was killed is marked failed by `dagster dev`'s daemon
# instead of staying STARTED forever; the steps that run a network take turns (pool model_compute, limit 1).
# Regenerated when this Makefile changes.
$(DAGSTER_HOME)/dagster.yaml: Makefile
	mkdir -p $(DAGSTER_HOME)
	printf '%s\n' 'telemetry:' '  enabled: false' 'nux:' '  enabled: false' \
	  'run_launcher:' '  module: geoseg_assets.run_launcher' '  class: HealthCheckedRunLauncher' \
	  '  config:' '    warm_run_workers: true' \
	  'run_monitoring:' '  enabled: true' '  poll_interval_seconds: 30' \
	  'concurrency:' '  pools:' '    default_limit: 1' > $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m geoseg_assets.demo

# `dg dev` / `dg check defs` (dagster-dg-cli) read [tool.dg] in pyproject.toml: the same code location as
# workspace.yaml, in this virtualenv (VIRTUAL_ENV says so: dg warns when the active env is not the project's).
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/dg
# The geoseg viewer (maps, legends, reports; asset metadata links to it, GEOSEG_VIEWER_URL says where) and the MLflow
# UI of the embedded store (model metadata links to its runs; without MLflow 3's job-execution workers, 7 processes
# geoseg does not use) next to Dagster; Ctrl-C stops all three.
ui: install $(DAGSTER_HOME)/dagster.yaml
	trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT INT TERM; \
	$(PY) -m geoseg_assets.viewer --host 127.0.0.1 --port 3100 & \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DATA)/mlflow/mlflow.db --host 127.0.0.1 --port 5000 --workers 1 & \
	$(DG) dev -h 127.0.0.1 -p 3000 & \
	wait

check: install $(DAGSTER_HOME)/dagster.yaml
	$(DG) check defs

# Production-like UI: webserver + daemon on the dagster-postgres instance of dagster.yaml (queued runs,
# concurrency limits, run retries and monitoring), both stopped together by Ctrl-C.
PG_HOME := $(DATA)/dagster_home_pg
ui-prod: export DAGSTER_HOME := $(PG_HOME)
ui-prod: export DAGSTER_PG_HOST ?= 127.0.0.1
ui-prod: export DAGSTER_PG_PORT ?= 5432
ui-prod: export DAGSTER_PG_USER ?= postgres
ui-prod: export DAGSTER_PG_PASSWORD ?=
ui-prod: export DAGSTER_PG_DB ?= geoseg
ui-prod: install
	mkdir -p $(PG_HOME) && cp dagster.yaml $(PG_HOME)/dagster.yaml
	PGPASSWORD="$$DAGSTER_PG_PASSWORD" psql -h "$$DAGSTER_PG_HOST" -p "$$DAGSTER_PG_PORT" -U "$$DAGSTER_PG_USER" -d postgres -qAtc \
	  "SELECT 1 FROM pg_database WHERE datname = '$$DAGSTER_PG_DB'" | grep -q 1 || \
	  PGPASSWORD="$$DAGSTER_PG_PASSWORD" psql -h "$$DAGSTER_PG_HOST" -p "$$DAGSTER_PG_PORT" -U "$$DAGSTER_PG_USER" -d postgres \
	  -qc "CREATE DATABASE \"$$DAGSTER_PG_DB\""
	$(VENV)/bin/dagster instance migrate
	$(PY) -m geoseg_assets.pools
	trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT INT TERM; \
	$(VENV)/bin/dagster-daemon run -w workspace.yaml & \
	$(VENV)/bin/dagster-webserver -h 127.0.0.1 -p $${GEOSEG_UI_PORT:-3000} -w workspace.yaml & \
	wait

# Debian's chromium for the browser tests (playwright drives it; no browser download works here).
browser:
	command -v chromium >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

services:
	bash .ci/services.sh

# Three xdist workers, whole modules each (module fixtures built once), the longest modules first (tests/conftest.py);
# one BLAS/OpenMP thread per process, since three workers and their step processes already share two cores
# (spinning OpenMP threads of oversubscribed processes burn the CPU the others need).
test: install services browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 3 --dist loadfile --no-loadscope-reorder -ra --durations=15

bench: install
	$(PY) -m pip install --quiet -c requirements.lock -e ".[bench]"
	$(PY) benchmarks/bench_tiling.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_backfill.py
	$(PY) benchmarks/bench_object_store.py
	$(PY) benchmarks/bench_automation.py

lock: install
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(DATA)
