# sensorcast: two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.9
UV := .tools/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
KAFKA_JARS := infra/kafka/jars
export MLFLOW_DISABLE_TELEMETRY := true
export UV_LINK_MODE ?= hardlink
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install peers-env bench-peers kafka-jars kafka-jars-lock lint format test test-lifecycle test-unit test-integration demo bench bench-accuracy bench-latency soak lifecycle stack-up stack-down clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev --extra local --python $(PYTHON)
	touch $@

.venv-peers/.installed: $(UV) infra/peers/pyproject.toml infra/peers/uv.lock  ## bench accuracy --peers: pandas < 3, so apart
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.venv-peers $(UV) sync --frozen --project infra/peers --python $(PYTHON)
	touch $@

$(KAFKA_JARS)/.fetched: infra/kafka/jars.lock $(VENV)/.installed  ## from Maven Central by the lock's digests: no Maven
	$(PY) -m pipeline.tools.jars
	touch $@

kafka-jars-lock:  ## write infra/kafka/jars.lock again from infra/kafka/pom.xml (needs Maven)
	$(PY) -m pipeline.tools.jars --lock

install: $(VENV)/.installed $(KAFKA_JARS)/.fetched  ## venv, Python packages (locked) and the Kafka jars

peers-env: .venv-peers/.installed  ## statsforecast, mlforecast and neuralforecast for bench accuracy --peers

kafka-jars: $(KAFKA_JARS)/.fetched

lint: $(VENV)/.installed  ## ruff: lint and format check (line length 120, configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install peers-env  ## unit and integration tests against a real broker (started here unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(PY) -m pytest tests -m "not lifecycle" --durations=15

test-lifecycle: install  ## the compressed month (tests/e2e/test_lifecycle.py, 7 to 18 min on 2 cores): CI's second stage
	$(PY) -m pytest tests -m lifecycle -rP --durations=5  # -rP: the month's report, printed

test-unit: install peers-env  ## the fast tests (the peers test needs .venv-peers, as make test)
	$(PY) -m pytest tests -m "not integration"

test-integration: install
	$(PY) -m pytest tests -m integration

demo: install  ## the main job on embedded defaults
	$(VENV)/bin/sensorcast demo

bench: install  ## JSON results under bench-results/
	mkdir -p bench-results
	$(VENV)/bin/sensorcast bench accuracy --protocol standard --dataset exchange --horizons 96 --json bench-results/accuracy-exchange.json
	$(VENV)/bin/sensorcast bench accuracy --protocol standard --dataset etth1 --horizons 96 --json bench-results/accuracy-etth1.json
	$(VENV)/bin/sensorcast bench accuracy --protocol seed --dataset exchange --json bench-results/accuracy-seed.json
	$(MAKE) bench-peers
	$(VENV)/bin/sensorcast bench intervals --plot bench-results/interval-coverage.png --json bench-results/intervals.json
	$(VENV)/bin/sensorcast bench intervals --dataset weather --plot bench-results/interval-coverage-weather.png --json bench-results/intervals-weather.json
	$(VENV)/bin/sensorcast bench intervals --per-entity --json bench-results/intervals-per-entity.json
	$(VENV)/bin/sensorcast bench latency --guarantees at-least-once,exactly-once --security PLAINTEXT,SASL_SSL --json bench-results/latency.json
	$(VENV)/bin/sensorcast bench retrain --json bench-results/retrain.json
	$(VENV)/bin/sensorcast bench restart --json bench-results/restart.json

bench-peers: install peers-env  ## the README's peers table: ours, the naive and what a user would install instead, H = 96
	mkdir -p bench-results
	for d in etth1 exchange; do $(VENV)/bin/sensorcast bench accuracy --dataset $$d --horizons 96 \
		--models itransformer,persistence,mean,seasonal --peers statsforecast,mlforecast,neuralforecast \
		--json bench-results/accuracy-peers-$$d.json || exit 1; done

soak: install  ## minutes at a steady rate per Kafka client, then 200,000 distinct entities; not part of make test
	mkdir -p bench-results
	$(VENV)/bin/sensorcast bench soak --json bench-results/soak.json

lifecycle: install  ## a month of operation on a private stack (a day takes one to two minutes on 2 cores); make test-lifecycle runs four days of it
	mkdir -p bench-results
	$(VENV)/bin/sensorcast bench lifecycle --json bench-results/lifecycle.json

stack-up: install
	$(VENV)/bin/sensorcast stack up

stack-down: install
	$(VENV)/bin/sensorcast stack down

clean:
	-$(VENV)/bin/sensorcast stack down
	rm -rf $(VENV) .tools $(KAFKA_JARS) .state bench-results .pytest_cache
