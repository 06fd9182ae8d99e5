# voxclone: `make run` sets everything up and starts the bot; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test worker lint imports bench clean-venv

run: $(STAMP_RUN)
	@scripts/system-deps.sh run
	@mkdir -p data
	$(VENV)/bin/voxclone bot

worker: $(STAMP_RUN)
	@scripts/system-deps.sh run
	$(VENV)/bin/voxclone worker

test: $(STAMP_TEST)
	@scripts/system-deps.sh test
	scripts/with-postgres.sh $(PY) -m pytest $(PYTEST_ARGS)

lint: imports
	$(VENV)/bin/ruff check core bot cogs storage worker tests bench
	$(VENV)/bin/ruff format --check core bot cogs storage worker tests bench
	$(VENV)/bin/mypy

# The import contract in pyproject.toml: every import points down the layers, no circles.
imports: $(STAMP_TEST)
	$(VENV)/bin/lint-imports

bench: $(STAMP_TEST)
	$(PY) bench/synthesis.py --size tiny

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel

# Reinstall when pyproject.toml changes.
$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[worker]'
	@touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[worker,test]'
	@touch $@ $(STAMP_RUN)

clean-venv:
	rm -rf $(VENV)
