# Every target builds its own virtual environment from pinned versions, so each works on a
# fresh machine with only python3.11 on PATH.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo unit lint security test test-all bench clean grpc-client grpc-stubs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# A stock KServe v2 gRPC client (tritonclient[grpc]) in a venv of its own: it needs
# protobuf<7, Ray 2.60 needs protobuf 7. tests/integration/test_serve_grpc.py runs it by
# subprocess (and skips without it). Adds ~60 s to a fresh `make test`.
GRPC_CLIENT := .venv-grpc-client
GRPC_CLIENT_STAMP := $(GRPC_CLIENT)/.installed

$(GRPC_CLIENT_STAMP): constraints-grpc-client.txt
	$(PYTHON) -m venv $(GRPC_CLIENT)
	$(GRPC_CLIENT)/bin/pip install --quiet --upgrade pip==25.3
	$(GRPC_CLIENT)/bin/pip install --quiet -c constraints-grpc-client.txt "tritonclient[grpc]"
	touch $(GRPC_CLIENT_STAMP)

grpc-client: $(GRPC_CLIENT_STAMP)

# The committed KServe v2 gRPC stubs, regenerated from their .proto (grpcio-tools, dev extra).
grpc-stubs: $(STAMP)
	cd platform && ../$(BIN)/python -m grpc_tools.protoc -I . --python_out=. \
		--grpc_python_out=. rayfleet/serve/grpc/predict_v2.proto

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
test: lint $(GRPC_CLIENT_STAMP)
	$(BIN)/python -m pytest -m "not slow" --durations=30 tests

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
	$(BIN)/python tests/benchmarks/preemption.py
	$(BIN)/python tests/benchmarks/compress.py

clean:
	rm -rf $(VENV) $(GRPC_CLIENT) .pytest_cache
