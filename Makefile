# The two commands a newcomer needs (see README.md):
#   make run   - create .venv, install Meshtap, run everything in one process with demo traffic
#   make test  - install what the tests need (Debian packages too, when root) and run everything
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint typecheck importlint pytest services venv clean protos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# One process (manage.py standalone): the runtime, chDB under ./var, the web admin on
# 127.0.0.1:8000, a Celery worker and beat; DEMO= turns the demo traffic off. The embedded
# default records every event flow into chDB (in-process ClickHouse) under ./var.
CAPTURE ?= chdb://$(CURDIR)/var/chdb
DEMO    ?= --demo

run: venv
	$(BIN)/python manage.py standalone $(DEMO) --capture $(CAPTURE) \
		--capture-spool-dir $(CURDIR)/var/spool $(ARGS)

# The gRPC API's protobuf modules are committed; tests/test_grpc_protos.py fails when stale.
protos: venv
	$(BIN)/python -m grpc_tools.protoc -I runtime/_proto --python_out=runtime/_proto \
		--pyi_out=runtime/_proto runtime/_proto/eventmesh.proto

services:
	bash scripts/install-test-services.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

importlint: venv
	$(BIN)/lint-imports

pytest: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: services venv lint typecheck importlint pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
