# Two commands: `make run` and `make test`. Each sets everything up on a fresh machine.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PICO_CSS := tidegate/web/static/vendor/pico.min.css
CHART_JS := tidegate/web/static/vendor/chart.umd.js
# axe-core runs in the browser tests only (tests/web/test_every_page.py): never served.
AXE_JS   := build/axe.min.js
HOST     ?= 127.0.0.1
PORT     ?= 8000

.PHONY: run test lint setup browser clients haproxy bench-tools check-python clean

check-python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tidegate needs Python >= 3.11"'

$(STAMP): requirements.lock pyproject.toml | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The UI's libraries (Pico for CSS, Chart.js for charts) and the tests' axe-core, from the
# npm registry; copied, never committed.
$(PICO_CSS) $(CHART_JS) $(AXE_JS) &: package.json package-lock.json
	npm ci --no-audit --no-fund
	mkdir -p $(dir $(PICO_CSS)) $(dir $(AXE_JS))
	cp node_modules/@picocss/pico/css/pico.min.css $(PICO_CSS)
	cp node_modules/chart.js/dist/chart.umd.js $(CHART_JS)
	cp node_modules/axe-core/axe.min.js $(AXE_JS)

setup: $(STAMP) $(PICO_CSS) $(CHART_JS) $(AXE_JS)

# Browser tests drive Debian's Chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

# The PostgreSQL clients the wire-protocol tests drive: psql, and the JDBC driver (what
# Tableau, DBeaver and Metabase use) with a JDK to run it, from Debian's packages; pandas
# apart from the server's virtualenv (requirements-clients.lock says why).
PYCLIENTS := build/pyclients/.installed
$(PYCLIENTS): requirements-clients.lock $(STAMP)
	rm -rf $(dir $@) && $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(dir $@) -r $<
	touch $@

# moto's standalone S3 server, for the object-storage tests (requirements-s3server.lock).
S3SERVER := build/s3server/.installed
$(S3SERVER): requirements-s3server.lock $(STAMP)
	rm -rf $(dir $@) && $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(dir $@) -r $<
	touch $@

clients: $(PYCLIENTS) $(S3SERVER)
	@command -v psql >/dev/null 2>&1 || (apt-get update && apt-get install -y postgresql-client)
	@command -v javac >/dev/null 2>&1 || (apt-get update && apt-get install -y default-jdk-headless)
	@test -f /usr/share/java/postgresql.jar || (apt-get update && apt-get install -y libpostgresql-jdbc-java)

# The load balancer the multi-node tests (tests/scale) put in front of two nodes, with the
# configuration compose.yaml uses (deploy/haproxy.cfg): Debian's HAProxy.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || (apt-get update && apt-get install -y haproxy)

# What the benches in bench/ drive load with (wrk) and put in front of nodes (bench/scale.py).
bench-tools: haproxy
	@command -v wrk >/dev/null 2>&1 || (apt-get update && apt-get install -y wrk)

run: setup
	$(BIN)/tidegate init --if-needed
	$(BIN)/tidegate serve --host $(HOST) --port $(PORT)

# Four workers on two cores: most tests wait on servers they start, not on the CPU.
# Whole files go to one worker (--dist loadfile): a module's servers start once; slowest
# files first, in tests/file_costs.txt's order (not xdist's "most tests first").
PYTEST_ARGS ?= -n 4 --dist loadfile --no-loadscope-reorder

# Style and structure, before the tests: ruff (lint and format), the layers contract
# (.importlinter) and mypy (strict on credentials, access, audit, data: pyproject.toml).
lint: setup
	$(BIN)/ruff check tidegate tests bench
	$(BIN)/ruff format --check tidegate tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy tidegate

test: setup browser clients haproxy lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info node_modules tidegate/web/static/vendor
