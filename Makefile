# voxclone: `make run` sets everything up and starts the bot; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run install test worker lint imports bench messages clean-venv

run: $(STAMP_RUN)
	@scripts/system-deps.sh run
	@mkdir -p data
	$(VENV)/bin/voxclone bot

# Only the installation (the venv with the speech engines), e.g. to try the command line without Discord.
install: $(STAMP_RUN)
	@scripts/system-deps.sh run

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

# After changing what the bot says: new messages appear, untranslated, in every catalog (core/locales).
messages: $(STAMP_TEST)
	$(PY) -m bot.catalogs update
	$(PY) -m bot.catalogs check || true

bench: $(STAMP_TEST)
	$(PY) bench/synthesis.py --size tiny

$(PY):
	@echo "voxclone: creating the Python environment in $(VENV)/"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel

# Reinstall when pyproject.toml changes.
$(STAMP_RUN): pyproject.toml | $(PY)
	@echo "voxclone: installing the bot and its speech engines into $(VENV)/: PyTorch (with CUDA), coqui-tts"
	@echo "  (XTTS-v2), Whisper, voice activity detection, speaker verification, the watermark: about 6 GB."
	@echo "  This takes a few minutes the first time (about 2 on a fast line) and is skipped afterwards."
	@start=$$(date +%s); $(PY) -m pip install -q -e '.[worker]' && \
	  echo "voxclone: installed in $$(( $$(date +%s) - start )) s"
	@touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	@echo "voxclone: installing the bot, its speech engines (PyTorch, coqui-tts, Whisper...: about 6 GB) and"
	@echo "  the test tools into $(VENV)/. This takes a few minutes the first time and is skipped afterwards."
	@start=$$(date +%s); $(PY) -m pip install -q -e '.[worker,test]' && \
	  echo "voxclone: installed in $$(( $$(date +%s) - start )) s"
	@touch $@ $(STAMP_RUN)

clean-venv:
	rm -rf $(VENV)
