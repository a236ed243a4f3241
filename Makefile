# Trainwire developer commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/trainwire/v1/*.proto)
STAMP_TEST := $(VENV)/.installed-test

.PHONY: help install demo serve test lint proto bench clean

help:
	@echo "make demo | serve | test | lint | proto | bench | clean"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime install: the project, its runtime dependencies and the PostgreSQL driver (the
# README's `TRAINWIRE_DATABASE_URL=postgresql://... make serve` needs it).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[postgres]'
	touch $@

# The test install: runtime plus test and dev extras (torch==2.13.0 CPU comes from the local disk).
$(STAMP_TEST): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

serve: $(VENV)/.installed
	$(BIN)/trainwire serve

# Two processes, each running whole files (their module fixtures, servers among them, start
# once): most tests wait on servers and subprocesses, so two cores run two at once.
test: $(STAMP_TEST)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy engine server client

# Regenerate the Python stubs from the .proto files (committed; tests/test_protos.py checks drift).
proto: $(STAMP_TEST)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)

bench: $(STAMP_TEST)
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
