# The README's commands. Each target sets up the virtual environment first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup browser run test lint protos clean

setup: $(STAMP)  ## create .venv and install nearcat with its dev tools

# Re-installs only when pyproject.toml changes, so `make setup` is cheap to re-run.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	touch $(STAMP)

# The console's browser tests drive Debian's chromium (Playwright's own downloads are not used).
browser:  ## install chromium for the web console's browser tests (needs root and apt)
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core)
	@# without a font the pages render no text at all (and the tests read text)
	test -n "$$(find /usr/share/fonts -name '*.ttf' -print -quit 2>/dev/null)" || \
		(apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core)

run: setup  ## serve on embedded defaults: ./var, 127.0.0.1:50051, web console on :8080 (ARGS='--port 6000' to change)
	$(BIN)/nearcat serve --console-port 8080 $(ARGS)

test: setup browser  ## the whole test suite (PYTEST_ARGS='-k store' to narrow it)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy embedder indexer server

protos: setup  ## regenerate server/proto/ after editing protos/
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
