# stream-monitor: `make demo`, `make test`. Needs Python 3.11+, and Java 17 + Maven for the local broker
# (used when neither KAFKA_BOOTSTRAP_SERVERS nor a Docker engine is available).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install kafka-jars system-deps test test-unit test-no-extensions test-sanitize demo bench broker docs clean

$(STAMP): pyproject.toml stream_monitor/core/_columnar.c stream_monitor/core/_binned.c stream_monitor/core/_panes.c   # built by the install
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

kafka-jars: install          ## download Apache Kafka jars into .cache/ (once)
	$(VENV)/bin/stream-monitor broker --fetch-only

system-deps:                 ## the system tools the tests use (Java, Maven, gcc, Prometheus, ...), from Debian if missing
	bash .ci/system-deps

test: system-deps            ## all tests, on a fresh machine too; integration tests start one real broker
	$(MAKE) --no-print-directory kafka-jars
	$(PY) -m pytest

test-unit: install           ## pure-core tests only, no broker
	$(PY) -m pytest -m "not kafka"

test-no-extensions: system-deps   ## all tests on the path without a C compiler (every compiled part switched off)
	$(MAKE) --no-print-directory kafka-jars
	STREAM_MONITOR_NO_EXTENSIONS=1 $(PY) -m pytest

test-sanitize: system-deps   ## core tests against the compiled parts built with ASan and UBSan
	$(MAKE) --no-print-directory install
	PYTHON=$(PY) bash .ci/sanitize

demo: install                ## drifting loan-approval workload -> monitor -> alerts
	$(PY) -m stream_monitor.kafka.demo

bench: install               ## benchmark figures (see docs/benchmarks.md)
	$(PY) bench/drift_engine.py
	$(PY) bench/decode.py
	$(PY) bench/core_profile.py
	$(PY) bench/label_join.py
	$(PY) bench/kafka_throughput.py
	$(PY) bench/scale_out.py
	$(PY) bench/alert_latency.py
	$(PY) bench/detection.py     # peers too: see the script for their environment, then --peers

docs: install                ## docs/backtest-report.png: the report test's own Chromium render of its report
	STREAM_MONITOR_UPDATE_DOCS=1 $(PY) -m pytest -q tests/test_backtest.py -k chromium

broker: install              ## a local broker until Ctrl-C
	$(VENV)/bin/stream-monitor broker

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info
