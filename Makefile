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
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/mypy --strict src/gatepost
	$(BIN)/ruff check src tests

clean:
	rm -rf examples/var .pytest_cache .mypy_cache .ruff_cache
