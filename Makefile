# ESP: `make up` runs the whole stack on local nodes; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up install deps dev-deps node-tools redis redis-bin test lint typecheck unit integration reliability bench image images dockerd clean

up: install
	@scripts/up.sh

install: deps node-tools redis

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamp files make re-installs free when the pins did not change.
$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	@touch $@
deps: $(VENV)/.deps $(BIN)/esp

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	@touch $(VENV)/.deps $@
dev-deps: $(VENV)/.dev-deps $(BIN)/esp

# The operators' command line (cli/): `.venv/bin/esp`, or `esp` with the venv activated.
$(BIN)/esp: scripts/esp | $(BIN)/python
	install -m 755 scripts/esp $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@
node-tools: node_modules/.installed

redis:
	@scripts/redis.sh

# The tests start their own Redis server (a free port, a private folder): they need its binary only.
redis-bin: dev-deps
	@scripts/redis.sh server-bin >/dev/null

test: dev-deps node-tools redis-bin lint typecheck
	$(BIN)/pytest

lint: dev-deps node-tools
	$(BIN)/ruff check .
	$(BIN)/python -m contracts.build --check

typecheck: dev-deps
	$(BIN)/mypy

unit: dev-deps
	$(BIN)/pytest tests/unit

integration: dev-deps node-tools redis-bin
	$(BIN)/pytest tests/integration

# The fault suite; its report goes to run/reliability/ (ESP_RELIABILITY_REPORT_DIR elsewhere).
reliability: dev-deps node-tools redis-bin
	$(BIN)/pytest tests/reliability

# The benchmarks' own tools (httpx, matplotlib, rich) are pinned with the test tools.
bench: install dev-deps
	$(BIN)/python -m bench.devnet
	$(BIN)/python -m bench.policies
	$(BIN)/python -m bench.writes
	$(BIN)/python -m bench.rpc
	$(BIN)/python -m bench.request_counting
	$(BIN)/python -m bench.thesis quick

image: install
	scripts/build-image.sh

# Every image compose/esp.yml runs (the Debian base by debootstrap, ESP, the anvil image), with no registry.
images: deps node-tools
	scripts/build-images.sh

dockerd:
	scripts/dockerd.sh start

clean:
	rm -rf run .pytest_cache .mypy_cache .ruff_cache
