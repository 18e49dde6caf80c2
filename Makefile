# change-relay: the README's two commands are `make run` and `make test`; each does all of its own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA := $(PYTHON) deploy/local-kafka/local_kafka.py

.PHONY: help venv prereqs kafka-fetch kafka simulator run test test-alerts dashboard-png lint typecheck unit fuzz bench \
	soak clean schemas

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

prereqs: ## fail at once, naming what to install, if Python 3.11+, Java 17+ or Maven is missing
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: install python3.11 (found " + sys.version.split()[0] + ")")'
	@$(KAFKA) check

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: install python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its test extras

kafka-fetch: prereqs ## resolve the Kafka broker's jars with Maven into .cache/ (once)
	@$(KAFKA) fetch >/dev/null

kafka: kafka-fetch ## run a local Kafka broker in the foreground (KAFKA_PORT, default 9092; KAFKA_DATA_DIR; KAFKA_SECURITY=ssl|mtls|scram|plain|all)
	$(KAFKA) run

# The committed contract: the default configuration with every resource the simulator serves (a test compares).
SCHEMA_RESOURCES := ats/users,ats/candidates,ats/jobs,hris/employees
schemas: venv ## regenerate deploy/schemas/ (event JSON Schemas, AsyncAPI) from the code
	$(BIN)/relay schema --out deploy/schemas
	env -i PATH="$$PATH" RELAY_RESOURCES=$(SCHEMA_RESOURCES) $(BIN)/relay asyncapi > deploy/schemas/asyncapi.yaml

simulator: venv ## run the Kombo simulator in the foreground with its defaults
	$(BIN)/relay simulate

run: prereqs venv kafka-fetch ## start Kafka, the simulator, the relay and `relay tail`; Ctrl-C stops them all
	$(BIN)/python deploy/run-local.py

lint: venv ## ruff and mypy --strict
	$(BIN)/ruff check relay tests deploy
	$(BIN)/ruff format --check relay tests deploy
	$(BIN)/mypy

test: prereqs venv kafka-fetch lint ## the whole suite against a real broker it starts and stops itself
	$(BIN)/pytest

fuzz: venv ## the fuzz suite at length (RELAY_FUZZ_EXAMPLES, default 5000 inputs per test); `make test` runs 150
	RELAY_FUZZ_RANDOM=1 RELAY_FUZZ_EXAMPLES=$${RELAY_FUZZ_EXAMPLES:-5000} $(BIN)/pytest tests/fuzz -p no:cacheprovider -o addopts="" -q --timeout=0

test-alerts: venv ## the alert rules alone: promtool check and unit tests (builds promtool once), no Kafka needed
	$(BIN)/pytest tests/deploy/test_promtool_checks.py tests/deploy/test_alert_rules.py -p no:cacheprovider -q

DASHBOARD_RUN := .cache/dashboard-run
dashboard-png: venv kafka-fetch ## the live alert test, then each dashboard panel from its run as a PNG (matplotlib)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	RELAY_DASHBOARD_DUMP=$(DASHBOARD_RUN)/panels.json $(BIN)/pytest tests/deploy/test_alerts_live.py -p no:cacheprovider -q
	$(BIN)/python deploy/tools/render_dashboard.py $(DASHBOARD_RUN)/panels.json $(DASHBOARD_RUN)/png
	cp $(DASHBOARD_RUN)/png/poll-outcomes.png deploy/grafana/poll-outcomes.png

# make's own options come first on its command line: the benchmarks' go in BENCH_ARGS, e.g.
# `make bench BENCH_ARGS="--only fleet-scale"` (`python -m tests.benchmarks --help` lists them).
BENCH_ARGS ?=
bench: venv kafka-fetch ## benchmarks (long): figures into tests/benchmarks/results/ (BENCH_ARGS="--only fleet-scale")
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m tests.benchmarks $(BENCH_ARGS)

soak: venv kafka-fetch ## the exactly-once fault suite at soak size (200 SIGKILLs, long runs); summaries at the end
	RELAY_SOAK=1 $(BIN)/pytest tests/faults -p no:cacheprovider -o addopts="" -q -rA

clean: ## remove the virtualenv and caches (not the Kafka jars)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
