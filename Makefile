# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the test suite).
# Both create the virtual environment first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)

# Offline defaults: use ../shared (ANI NeuroChem weights, COD CIFs) when it sits beside the repo.
# Set ANI_MODEL_DIR= / COD_SOURCE= (empty) to use torchani's download and the COD web service.
ANI_MODEL_DIR ?= $(if $(wildcard $(SHARED)/models/ani-neurochem),$(SHARED)/models/ani-neurochem,)
COD_SOURCE ?= $(if $(wildcard $(SHARED)/data/cod),$(SHARED)/data/cod,)
export ANI_MODEL_DIR COD_SOURCE
export OPENBLAS_NUM_THREADS := 1
export TORCHANI_NO_WARN_EXTENSIONS := 1

.PHONY: env demo test test-fast lint campaign results clean-data

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev,postgres]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (codani)" >/dev/null
	touch $@

demo: env
	$(PY) -m helpers.cli demo

test: env
	$(PY) -m pytest -q -ra --durations=25

test-fast: env
	$(PY) -m pytest -q -m "not slow"

lint: env
	$(VENV)/bin/ruff check helpers tests benchmarks

campaign: env
	$(PY) -m helpers.cli campaign $(ARGS)

# The study's table on the real COD sample for every potential (hours; resumable: rerun to continue).
results: env
	$(PY) -m helpers.cli results --data-dir $(SHARED)/data $(ARGS)

clean-data:
	find data -mindepth 1 ! -name README.md ! -name demo_cod_ids.txt -exec rm -rf {} +
