# gatepost: `make run` starts the single-gateway example, `make test` runs every test.
# Both set up the virtual environment in .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= examples/single-gateway.toml

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV) || { apt-get install -y python3-venv && $(PY) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gatepost -c $(CONFIG) run --guide

test: $(STAMP)
	scripts/install-tools
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/mypy --strict src/gatepost
	$(BIN)/ruff check src tests

clean:
	rm -rf examples/var .pytest_cache .mypy_cache .ruff_cache

# Benchmark against a private Postfix, gatepost on SQLite and on a private PostgreSQL
# (never part of `make test`); see bench/run.py --help.
BENCH_ARGS ?=
bench: $(STAMP)
	scripts/install-tools
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-large: $(STAMP)
	$(MAKE) bench BENCH_ARGS="-n 20000 --rounds 5 --latency-seconds 30"

# Crash soak (never part of `make test`): kill -9 under load, then count lost and
# duplicated mail, also against a misbehaving smart host (mode unruly) and one slower than a
# lease (mode slow); about 14 minutes; see tests/soak.py --help
# and README "Soak tests". About 6.5 minutes.
SOAK_ARGS ?= --messages 25000 --kills 20
SOAK_DIR ?= /tmp/gatepost-soak
soak: $(STAMP)
	rm -rf $(SOAK_DIR)
	$(BIN)/python tests/soak.py --dir $(SOAK_DIR) $(SOAK_ARGS)

# Large queue (issue #5): gatepost relay with 1,000,000 deferred messages queued vs an
# empty store, and how long `gatepost mailq` takes; writes bench/results/latest-queue.md.
QUEUE_ARGS ?= --large-queue 1000000
bench-queue: $(STAMP)
	$(MAKE) bench BENCH_ARGS="$(QUEUE_ARGS)"
