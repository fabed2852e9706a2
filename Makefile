# Every target builds its own virtual environment from pinned versions, so each works on a
# fresh machine with only python3.11 on PATH.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo unit lint security test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The quickstart: a loopback S3 server, digits imported into it, 2-worker DDP training.
demo: $(STAMP)
	$(BIN)/python -m rayfleet.demo

# The fast loop: unit tests and the offline chart/manifest checks; no Ray, no servers.
unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "(unit or k8s) and not slow" tests/unit tests/k8s

# ruff's lint rules and formatting, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check platform tests
	$(BIN)/ruff format --check platform tests

# Regression tests for the threat model in the README (every tier that has them).
security: $(STAMP)
	$(BIN)/python -m pytest -m "security and not slow" tests

# Lint, then unit, k8s and integration tests (local Ray, loopback S3 server); the CI gate.
test: lint
	$(BIN)/python -m pytest -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest tests

# Speed targets as side-by-side ratios (see tests/benchmarks/).
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/train_overhead.py
	$(BIN)/python tests/benchmarks/data_loading.py
	$(BIN)/python tests/benchmarks/data_import.py
	$(BIN)/python tests/benchmarks/sweep_schedulers.py
	$(BIN)/python tests/benchmarks/sweep_scheduling.py
	$(BIN)/python tests/benchmarks/serve_latency.py
	$(BIN)/python tests/benchmarks/startup.py
	$(BIN)/python tests/benchmarks/node_loss.py

clean:
	rm -rf $(VENV) .pytest_cache
