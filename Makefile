# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Oversubscribed OpenMP/BLAS threads cost more than they give on small machines.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test lint typecheck pytest bench clean

$(BIN)/shoal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: $(BIN)/shoal
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/shoal
	$(BIN)/shoal demo --db sqlite:///demo.db --report demo-report.html

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(BIN)/shoal
	$(BIN)/python bench/online_retail.py

clean:
	rm -rf $(VENV) demo.db demo-report.html build *.egg-info .pytest_cache .mypy_cache .ruff_cache
