# geoseg: `make demo` runs the pipeline on embedded defaults, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= $(CURDIR)/data
export GEOSEG_DATA_DIR := $(DATA)
export DAGSTER_HOME := $(DATA)/dagster_home

.PHONY: install demo test ui bench services clean lock

# torch/torchvision go in first as the matched pair that lies on this machine's disk; then the
# project with every dependency pinned by requirements.lock (regenerate it with `make lock`).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' > $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m geoseg_assets.demo

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

services:
	bash .ci/services.sh

test: install services
	$(PY) -m pytest -ra

bench: install
	$(PY) benchmarks/bench_tiling.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_inference.py

lock: install
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(DATA)
