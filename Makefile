# `make help` lists the targets. Everything installs into .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install services db run test lint packages browser bench-fanout bench-crowd bench-registry bench-ingest \
	bench-recovery bench-ops bench-replicas bench-redis bench-candles bench-quotes bench-tick-bus chaos vendor-client

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed node_modules/.installed clients/js/dist/index.js ## Create .venv and install the pinned requirements (and npm's), build the JS client

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# socket.io-client, for the JS client test and the fan-out benchmark's load generator.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The JS client package (clients/js): its own dependencies (typescript), built into dist/.
clients/js/node_modules/.installed: clients/js/package.json clients/js/package-lock.json
	cd clients/js && npm ci --no-audit --no-fund
	touch $@

clients/js/dist/index.js: clients/js/node_modules/.installed clients/js/tsconfig.json $(wildcard clients/js/src/*.ts)
	cd clients/js && npm run --silent build
	touch $@

vendor-client: clients/js/dist/index.js ## Rebuild the JS client and copy it into the live page's static files (commit the result)
	$(BIN)/python scripts/vendor_client.py

services: ## Start the local Redis and PostgreSQL if they are down
	scripts/ensure-services

db: install services ## Create the database and apply the migrations
	$(BIN)/flask --app ticker db create
	$(BIN)/flask --app ticker db upgrade

run: db ## Run the whole service locally (simulator feed, shard worker, jobs, beat, web)
	scripts/run-local

test: install services packages ## Run the test suite (what CI runs)
	$(BIN)/python -m pytest

packages: ## Install Debian's chromium and chromedriver (the live page test drives them headless) and nginx (the replicas test runs it)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver nginx; }

browser: packages

bench-fanout: install services ## Fan-out benchmark vs the straightforward design (figures into BENCHMARKS.md)
	$(BIN)/python -m bench.fanout --write $(BENCH_ARGS)

bench-registry: install services ## Registry reload benchmark: COPY path vs ORM objects (figures into BENCHMARKS.md)
	$(BIN)/python -m bench.registry_reload --write $(BENCH_ARGS)

lint: install ## Lint with ruff
	$(BIN)/ruff check .

bench-crowd: install services ## Crowd benchmark: 1,000 clients connecting and subscribing at once
	$(BIN)/python -m bench.crowd --write $(BENCH_ARGS)

bench-ingest: install services ## Ingest benchmark: one shard process parsing and publishing
	$(BIN)/python -m bench.ingest $(BENCH_ARGS)

bench-candles: install services ## Candle builder: its CPU per tick against the shard's
	$(BIN)/python -m bench.candles $(BENCH_ARGS)

bench-tick-bus: install services ## Tick bus: one Redis vs a 3-master Redis Cluster, the same load
	$(BIN)/python -m bench.tick_bus $(BENCH_ARGS)

bench-recovery: install services ## Upstream recovery: first tick, reconnect, takeover medians
	$(BIN)/python -m bench.recovery $(BENCH_ARGS)

bench-quotes: install services ## Market quotes: what one replica answers (needs wrk: apt-get install wrk)
	$(BIN)/python -m bench.quotes $(BENCH_ARGS)

bench-replicas: install services ## One web replica against two on this host, and the capacity model's check (figures into BENCHMARKS.md)
	$(BIN)/python -m bench.replicas --write $(BENCH_ARGS)

bench-redis: install services ## Redis's CPU for the tick path: the shard's publish, and each subscribing replica
	$(BIN)/python -m bench.redis_fanout $(BENCH_ARGS)

bench-ops: install services ## Operations overhead: a log line's and a /metrics scrape's cost
	$(BIN)/python -m bench.ops $(BENCH_ARGS)

chaos: install services ## A compressed trading day of faults against the whole service (report into RELIABILITY.md)
	$(BIN)/python -m bench.chaos --write $(CHAOS_ARGS)
