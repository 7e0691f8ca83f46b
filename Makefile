# RobustMQ developer commands.  Both `make run` and `make test` build their
# own virtualenv (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/robustmq.toml

.PHONY: venv run test lint unit e2e system-deps bench compare cluster-start cluster-stop clean

# pip shows what it collects and installs, so a slow first install does not look hung.
$(BIN)/.installed: pyproject.toml
	@echo "==> creating the virtualenv $(VENV) (first run: a few minutes; later runs skip this)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip
	@echo "==> installing RobustMQ and its test dependencies into $(VENV)"
	$(BIN)/pip install --progress-bar on -e '.[test]'
	@echo "==> $(VENV) ready"
	touch $@

venv: $(BIN)/.installed

## run: start a single node with every role in this process (MQTT on 1883)
run: venv
	$(BIN)/robustmq start --config $(CONFIG)

## system-deps: Debian packages the tests and benchmarks drive (mosquitto clients, ...)
system-deps:
	sh scripts/install-system-deps.sh

## lint: ruff, mypy (interfaces, core, protocols) and the layer contracts of docs/architecture.md
lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: lint, then the whole suite (unit + end-to-end with real clients)
test: venv system-deps lint
	$(BIN)/pytest -p no:cacheprovider

unit: venv
	$(BIN)/pytest -p no:cacheprovider tests/unit

## cluster-start: etcd, 3 placement nodes and 3 brokers on loopback (etc/cluster/README.md)
cluster-start: venv
	RMQ_VENV=$(abspath $(VENV)) bash etc/cluster/start.sh

## cluster-stop: stop what cluster-start started
cluster-stop:
	bash etc/cluster/stop.sh

## compare: RobustMQ vs mosquitto side by side (see docs/performance.md)
compare: venv system-deps
	bash bench/compare.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info _trial_temp* .pytest_cache
