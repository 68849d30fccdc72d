# One bootstrap for every target: a .venv with conveyor and its pinned stack, rebuilt only when
# pyproject.toml changes. Needs nothing but python3 (3.11 or 3.12) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bootstrap system-deps run test lint format clean deploy ui bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

bootstrap: $(STAMP)

run: bootstrap
	$(BIN)/conveyor run

# Debian's Prometheus and Pushgateway for the observability tests (CI runs as root). Elsewhere:
# install them yourself; the tests that need them say so.
SYSTEM_BINARIES := prometheus promtool prometheus-pushgateway
system-deps:
	@missing=$$(for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null || echo $$b; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing prometheus prometheus-pushgateway (missing: $$missing)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends prometheus prometheus-pushgateway >/dev/null; \
		else \
			echo "missing $$missing: apt-get install prometheus prometheus-pushgateway (as root)"; \
		fi; \
	fi

test: bootstrap system-deps
	$(BIN)/pytest

# Benchmarks (never part of `make test`): machine-readable results in bench-results/, tables in
# BENCHMARKS.md.
bench: bootstrap
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "bench needs wrk: apt-get install wrk"; exit 1; }
	@# The pipeline benchmark's resumed release is the champion the serving and drift ones use.
	state=$$(mktemp -d) && trap 'rm -rf "$$state"' EXIT && \
	$(BIN)/python -m bench.pipeline --keep-state "$$state/fraud" && \
	$(BIN)/python -m bench.serving --state "$$state/fraud" --seconds 5 && \
	$(BIN)/python -m bench.drift --state "$$state/fraud" --unsampled && \
	$(BIN)/python -m bench.swap && \
	$(BIN)/python -m bench.control_key && \
	$(BIN)/python -m bench.report

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: bootstrap
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Work pools and every deployment in prefect.yaml, on the server in PREFECT_API_URL
# (default: the local one `make ui` starts).
PREFECT_API_URL ?= http://127.0.0.1:4200/api
deploy: bootstrap
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool inspect cpu >/dev/null 2>&1 || \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool create cpu --type process
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool inspect gpu >/dev/null 2>&1 || \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool create gpu --type process
	PREFECT_API_URL=$(PREFECT_API_URL) CONVEYOR_PROJECT_DIR=$(CURDIR) \
		$(BIN)/prefect --no-prompt deploy --all
	@# Zombie-run detection: runs whose heartbeats stop are marked Crashed (infra/prefect).
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect automation inspect \
		conveyor-crash-zombie-flow-runs >/dev/null 2>&1 || \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect automation create \
		--from-file infra/prefect/zombie-runs.yaml

# A local Prefect server (UI) and the MLflow UI on the embedded state; Ctrl-C stops both.
ui: bootstrap
	@echo "Prefect UI: http://127.0.0.1:4200   MLflow UI: http://127.0.0.1:5000"
	@echo "Then: make deploy; PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect worker start --pool cpu"
	trap 'kill 0' INT TERM; \
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200 & \
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CURDIR)/.conveyor/mlflow.db \
		--default-artifact-root $(CURDIR)/.conveyor/mlartifacts & \
	wait

clean:
	-$(BIN)/conveyor triton down
	rm -rf .conveyor
