# The README's commands. Each target sets up the virtual environment first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint protos clean

setup: $(STAMP)  ## create .venv and install nearcat with its dev tools

# Re-installs only when pyproject.toml changes, so `make setup` is cheap to re-run.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup  ## serve on embedded defaults: ./var, 127.0.0.1:50051 (ARGS='--port 6000' to change)
	$(BIN)/nearcat serve $(ARGS)

test: setup  ## the whole test suite (PYTEST_ARGS='-k store' to narrow it)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy embedder indexer server

protos: setup  ## regenerate server/proto/ after editing protos/
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
