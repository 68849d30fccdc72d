# One bootstrap for every target: a .venv with conveyor and its pinned stack, rebuilt only when
# pyproject.toml changes. Needs nothing but python3 (3.11 or 3.12) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bootstrap system-deps run test lint format clean deploy ui bench stack stack-down stack-status

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,stack]'
	$(BIN)/python -m pip check
	touch $(STAMP)

bootstrap: $(STAMP)

run: bootstrap
	$(BIN)/conveyor run

# Debian packages the server tests and `make stack` start: Prometheus and its Pushgateway,
# PostgreSQL and Redis (CI runs as root), the OpenMP runtime LightGBM's wheel links against
# (libgomp1, on most images already), the browser the UI test drives (chromium), and nginx for
# the edge in front of the Triton replicas (its certificates are made in Python).
# Elsewhere: install them yourself; what needs them says so. PostgreSQL's programs live off PATH, under /usr/lib/postgresql/<major>/bin.
SYSTEM_PACKAGES := prometheus prometheus-pushgateway postgresql redis-server libgomp1 chromium nginx
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-pushgateway >/dev/null || missing="$$missing prometheus-pushgateway"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ldconfig -p | grep -q 'libgomp\.so\.1' || missing="$$missing libgomp1"; \
	command -v chromium >/dev/null || missing="$$missing chromium fonts-liberation"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing:$$missing; install them as root: apt-get install$$missing"; \
		fi; \
	fi

# Two workers (tests/conftest.py groups what must share one); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: bootstrap system-deps
	$(BIN)/pytest -n $(TEST_WORKERS)

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
	$(BIN)/python -m bench.commands && \
	$(BIN)/python -m bench.busy && \
	$(BIN)/python -m bench.swap && \
	$(BIN)/python -m bench.control_key && \
	$(BIN)/python -m bench.stack && \
	$(BIN)/python -m bench.fleet && \
	$(BIN)/python -m bench.edge && \
	$(BIN)/python -m bench.canary && \
	$(BIN)/python -m bench.kinds --seconds 5 && \
	$(BIN)/python -m bench.explain && \
	$(BIN)/python -m bench.outcomes && \
	$(BIN)/python -m bench.score && \
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
# Seconds without a heartbeat before a flow run counts as dead: keep it above three beats.
ZOMBIE_AFTER_S ?= 600
deploy: bootstrap
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool inspect cpu >/dev/null 2>&1 || \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool create cpu --type process
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool inspect gpu >/dev/null 2>&1 || \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool create gpu --type process
	PREFECT_API_URL=$(PREFECT_API_URL) CONVEYOR_PROJECT_DIR=$(CURDIR) \
		$(BIN)/prefect --no-prompt deploy --all
	@# Run forms a person reads: models by name (deployments/models/), no raw type names.
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/python -m infra.deploy_forms
	@# Zombie-run detection: runs whose heartbeats stop for ZOMBIE_AFTER_S are marked Crashed
	@# (infra/prefect/zombie-runs.yaml).
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect automation inspect \
		conveyor-crash-zombie-flow-runs >/dev/null 2>&1 || { \
		rendered=$$(mktemp --suffix=.yaml) && \
		sed 's/^  within: 600$$/  within: $(ZOMBIE_AFTER_S)/; s/No heartbeat for 600 s/No heartbeat for $(ZOMBIE_AFTER_S) s/' \
			infra/prefect/zombie-runs.yaml > $$rendered && \
		PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect automation create --from-file $$rendered; \
		status=$$?; rm -f $$rendered; exit $$status; }

# The production topology on 127.0.0.1 without Docker (infra/stack/): PostgreSQL, Redis, S3,
# MLflow and Prefect servers, a worker per pool, Triton on the S3 repository, Prometheus and
# the Pushgateway, in STACK_DIR. Then `source $(STACK_DIR)/conveyor.env` and `make deploy`.
STACK_DIR ?= $(CURDIR)/.stack
stack: bootstrap system-deps
	$(BIN)/python -m infra.stack up --dir $(STACK_DIR)

stack-status: bootstrap
	$(BIN)/python -m infra.stack status --dir $(STACK_DIR)

# Stops every process of the stack and deletes its data (S3 is in memory): logs stay.
stack-down: bootstrap
	$(BIN)/python -m infra.stack down --dir $(STACK_DIR)

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
