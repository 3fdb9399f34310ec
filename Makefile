# glow-repro: `make setup` once, then `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU runners here have local wheels for these; elsewhere pip resolves the range in pyproject.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data lint test test-fast bench clean

setup: $(BIN)/glow-repro data

$(BIN)/glow-repro: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS) || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Offline Fashion-MNIST from Debian where the OS offers it; never fatal.
data:
	@if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	fi

# ruff check (rules in pyproject.toml), a formatting check (`ruff format .` applies the format)
# and mypy over the modules [tool.mypy] lists.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_step.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache
