# `make run` and `make test` work on a fresh clone: they create .venv and install what they need first.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format migrate bench load hostile clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m service serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service tests migrations bench
	$(BIN)/ruff format --check service tests migrations bench
	$(BIN)/mypy --strict service

format: $(STAMP)
	$(BIN)/ruff check --fix service tests migrations bench
	$(BIN)/ruff format service tests migrations bench

migrate: $(STAMP)
	$(BIN)/python -m service migrate

# Bounded (count and time) load test with random upstream faults on loopback, then an invariant check over the
# database. Default: an embedded PostgreSQL in a temp dir; LOAD_ARGS="--database-url postgresql://..." to name one.
load: $(STAMP)
	$(BIN)/python -m bench.load_invariants $(LOAD_ARGS)

# Bounded hostile-load run on loopback (~85 s): one tenant floods, reads nothing, sends bad inputs; the other's
# latency is checked against its idle figure. HOSTILE_ARGS="--database-url postgresql://..." to name a server.
hostile: $(STAMP)
	$(BIN)/python -m bench.hostile_load $(HOSTILE_ARGS)

# The performance suite (docs/benchmarks.md): prints one table of figures against their bars. Needs a
# PostgreSQL server (BENCH_DATABASE_URL is wiped). QUICK=1 for a short run; BENCH_10M=1 adds the 10M-item table.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
