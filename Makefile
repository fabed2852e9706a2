# Every target builds its own virtual environment from pinned versions, so each works on a
# fresh machine with only python3.11 on PATH.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The quickstart: a loopback S3 server, digits imported into it, 2-worker DDP training.
demo: $(STAMP)
	$(BIN)/python -m rayfleet.demo

# Unit and integration tests (local Ray, loopback S3 server); the CI gate.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest tests

# Speed targets as side-by-side ratios (see tests/benchmarks/).
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/train_overhead.py
	$(BIN)/python tests/benchmarks/data_loading.py
	$(BIN)/python tests/benchmarks/sweep_schedulers.py
	$(BIN)/python tests/benchmarks/sweep_scheduling.py
	$(BIN)/python tests/benchmarks/serve_latency.py

clean:
	rm -rf $(VENV) .pytest_cache
