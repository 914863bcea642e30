# Every target sets itself up: .venv is created and the project installed when missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# make test runs the suite in parallel (pytest-xdist), one Redis, Redis 6.2 and cluster per worker.
# It waits on servers, workers and HTTP more than it computes: on 2 shared cores, with the cluster
# tests, 4 workers took 4.2 to 6 minutes, 3 took 5 and more, 2 took 9 (serially: 8.5). Each test
# file runs on one worker (--dist loadfile): module fixtures (Flower, the multi-host worker
# processes, clusters) start once. TEST_WORKERS=0 (or ARGS="-n 0") runs it serially.
TEST_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS) --dist loadfile
# make test-fast: the store and transition tests, on the in-memory store and one Redis only.
FAST_TESTS := tests/store tests/test_replay.py tests/celery/test_transitions.py tests/test_models.py

.PHONY: demo test test-fast lint docs bench bench-scale chaos package install clean

# The browser the dashboard's tests drive: Debian's chromium, installed when missing.
BROWSER := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BROWSER):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m celery_app.demo $(ARGS)

test: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest $(XDIST) $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest --backends=memory,redis $(FAST_TESTS) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mpstate celery_app chaos tests benchmarks examples scripts
	$(BIN)/ruff format --check mpstate celery_app chaos tests benchmarks examples scripts
	$(BIN)/mypy

# The documentation site, built strictly (a warning fails it) into site/; the key layout, reply
# codes, settings and CLI help in it are generated from the code (docs/hooks/generated.py).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python -m benchmarks.store $(ARGS) && $(BIN)/python -m benchmarks.celery_hooks $(ARGS)
	$(BIN)/python -m benchmarks.dashboard $(ARGS)

# 1,000,000 runs on a private Redis and a private 3-master cluster: memory per run, throughput
# at 1/8/32 clients, list_runs at 1k vs 1M (over an hour on 2 cores; ARGS=--quick: about 3 min).
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale $(ARGS)

# The sdist and wheel as users get them: built, twine-checked, the wheel holding mpstate/ only,
# then installed from it into a fresh venv per extra (and bare) with a smoke import and the CLI's
# --help: a dependency missing from an extra fails here (40 to 60 s on 2 cores, pip cache warm).
package: $(STAMP)
	$(BIN)/python scripts/check_package.py $(ARGS)

# Many runs under worker kills, a Redis restart, erratic webhooks and bad input (about 3 min).
chaos: $(STAMP)
	$(BIN)/python -m chaos $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
