# The two commands: `make run` and `make test`. Everything installs into .venv on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench soak lint clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/mt5gate demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

# Two `serve` processes on PostgreSQL + a Redis of its own for SOAK_MINUTES (default 10).
SOAK_MINUTES ?= 10
soak: install
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app mt5gate_agent mt5gate_protocol

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
