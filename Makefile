# `make demo` and `make test` each set up everything on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test chaos bench zookeeper chromium venv clean

$(BIN)/jobboard: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/jobboard

# ZooKeeper from the Debian package when none is installed.
zookeeper:
	@if [ -e /usr/share/java/zookeeper.jar ] || [ -n "$$ZOOKEEPER_HOME" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper; \
	else \
		echo "ZooKeeper is not installed and cannot be installed here:"; \
		echo "install the Debian package 'zookeeper', or set ZOOKEEPER_HOME to an unpacked release."; \
		exit 1; \
	fi

# Debian's chromium for the console's browser test (Playwright drives it; no
# browser is downloaded). Without it that test skips (and fails under CI=true).
chromium:
	@if [ -e /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is not installed and cannot be installed here: the browser test will skip"; \
	fi

demo: venv zookeeper
	$(BIN)/jobboard demo

test: venv zookeeper chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) --ignore=tests/chaos tests

# The chaos suite (~2 min): a 3-node ensemble, a PostgreSQL logbook and a
# fleet of conductors under kill -9, pauses and ZooKeeper restarts.
chaos: venv zookeeper
	$(BIN)/python -m pytest -q -s $(PYTEST_ARGS) tests/chaos

# jobboard and OpenStack TaskFlow side by side (~20 min). TaskFlow goes only
# into the benchmark's own virtualenv, never into jobboard's dependencies.
bench: bench-venv
	BENCH_COMMAND="make bench" .venv-bench/bin/python -m bench.compare \
		--json bench/results/latest.json --markdown bench/results/latest.md $(BENCH_ARGS)

# Whole jobs through a real fleet (~6 min): K conductor processes, PostgreSQL
# and SQLite logbooks, TaskFlow's nonblocking conductor side by side.
.PHONY: bench-fleet bench-venv
bench-fleet: bench-venv
	BENCH_FLEET_COMMAND="make bench-fleet" .venv-bench/bin/python -m bench.fleet --cases \
		--json bench/results/fleet.json $(FLEET_ARGS)

# The benchmarks' own virtualenv: jobboard (with the PostgreSQL driver) and TaskFlow.
bench-venv: zookeeper
	@test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	@test -f .venv-bench/.installed || { \
		.venv-bench/bin/pip install -q --upgrade pip && \
		.venv-bench/bin/pip install -q -e '.[postgres]' && \
		{ .venv-bench/bin/pip install -q 'taskflow[zookeeper,database]==6.5.*' || \
		  echo "TaskFlow could not be installed: its columns will say so"; } && \
		touch .venv-bench/.installed; }
	@.venv-bench/bin/python -c 'import psycopg' 2>/dev/null || \
		.venv-bench/bin/pip install -q -e '.[postgres]'

clean:
	rm -rf $(VENV) .venv-bench *.egg-info .pytest_cache

# deploy/: promtool on the Prometheus config and alert rules, the dashboard's
# metric names, and a real Prometheus scraping a live exporter.
.PHONY: check-deploy
check-deploy: venv zookeeper
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/test_deploy.py
