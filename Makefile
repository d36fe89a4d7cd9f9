# One-command set-up: `make run` (the assistant) and `make test` (the suite) create the
# Python 3.10 virtualenv on first use and re-install only when pyproject.toml changes.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5005
NLG_PORT ?= 5056
HOST ?= 127.0.0.1
MODEL := models/demo.tar.gz
TRAINING_DATA := config.yml domain.yml $(wildcard data/*.yml)
# Rasa would otherwise try to reach its telemetry and error-reporting services.
export RASA_TELEMETRY_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

# Rasa 3.6 supports Python 3.8-3.10 only; prefer an explicit PYTHON, then python3.10,
# then pyenv's 3.10.x.
PYTHON ?= $(shell command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && echo python3.10 || \
	(command -v pyenv >/dev/null 2>&1 && v=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10\.[0-9]+$$' | tail -n1) && [ -n "$$v" ] && echo "$$(pyenv root)/versions/$$v/bin/python3.10"))

.PHONY: help venv test lint run shell train clean

help:
	@echo "make run    - train the demo assistant if needed and start it (rasa run, REST on $(HOST):$(PORT))"
	@echo "make test   - lint and run the test suite"
	@echo "make shell  - chat with the trained assistant in the terminal (rasa shell)"
	@echo "make train  - (re)train the demo assistant, HRED included, into $(MODEL)"
	@echo "make venv   - create/update the virtualenv in $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: Python 3.10 not found. Install it (e.g. 'pyenv install 3.10.13' or your OS's python3.10 package) or pass PYTHON=/path/to/python3.10." >&2; \
		exit 1; fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=70.3,<70.4" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -ra

# Rasa's own fingerprinting skips components whose config and data did not change.
$(MODEL): $(STAMP) $(TRAINING_DATA)
	$(BIN)/rasa train --fixed-model-name demo --out models

train: $(MODEL)

run: $(MODEL)
	$(BIN)/rasa run -m $(MODEL) -i $(HOST) -p $(PORT) --enable-api --cors "*" \
		--credentials credentials.yml --endpoints endpoints.yml

shell: $(MODEL)
	$(BIN)/rasa shell -m $(MODEL) --endpoints endpoints.yml

clean:
	rm -rf $(VENV) .pytest_cache models/ .rasa
